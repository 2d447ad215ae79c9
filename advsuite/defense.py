"""The defense protocol: a transform in front of the classifier, and the function that puts it there.

A :class:`Defense` is an ``nn.Module`` from images to images inside the same bounds. It declares whether
it is ``differentiable`` (white-box attacks can take gradients through it) and whether it is
``randomized`` (two calls on one image may differ: adaptive attacks average over it, EOT). A
non-differentiable defense offers :meth:`Defense.surrogate`, a differentiable stand-in whose gradient
replaces the defense's in the backward pass (BPDA, Athalye et al., ICML 2018); identity by default.

:func:`defend` returns a :class:`Classifier` that applies the defense and then the model, so every
attack, oracle and re-check in the pipeline sees the *defended* model, as its users would.
"""

from __future__ import annotations

import abc

import torch
from torch import nn

from advsuite.errors import AdvsuiteError, ConfigError, ModelError
from advsuite.models.classifier import Classifier


class Defense(nn.Module, abc.ABC):
    """A preprocessing defense: ``forward(x)`` maps [0, 1] images to [0, 1] images of the same shape."""

    #: gradients through ``forward`` are meaningful (if not, white-box attacks use :meth:`surrogate`)
    differentiable: bool = True
    #: the same image may come out differently from call to call
    randomized: bool = False
    #: how runs and the leaderboard name it
    name: str = "defense"

    @abc.abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The defended version of a batch of images."""

    def surrogate(self, x: torch.Tensor) -> torch.Tensor:
        """A differentiable approximation of :meth:`forward` for BPDA; the identity unless a defense knows better."""
        return x


class _Defended(nn.Module):
    """``model(defense(x))``; a non-differentiable defense passes the surrogate's gradient (BPDA) unless
    ``bpda`` is off (then gradients go through the defense as autograd sees it: what a naive attack does)."""

    def __init__(self, defense: Defense, model: Classifier, bpda: bool = True) -> None:
        super().__init__()
        self.defense = defense
        self.model = model
        self.bpda = bpda
        self.training = model.training  # wrapping changes no module's mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.defense.differentiable or not torch.is_grad_enabled() or not x.requires_grad:
            defended = self.checked(x)
        elif not self.bpda:
            defended = self.checked(x)
            if not defended.requires_grad:  # e.g. JPEG through libjpeg: to autograd, a zero gradient
                defended = defended + 0 * x
        else:
            approx = self.defense.surrogate(x)
            with torch.no_grad():
                exact = self.checked(x)
            defended = approx + (exact - approx).detach()  # forward: the defense; backward: the surrogate
        return self.model(defended)

    def checked(self, x: torch.Tensor) -> torch.Tensor:
        """The defense's output, refused with its name when it fails, changes the shape or leaves the bounds."""
        name = self.defense.name
        try:
            out = self.defense(x)
        except AdvsuiteError:
            raise
        except Exception as exc:
            raise ModelError(f"defense {name!r} failed on a batch of shape {tuple(x.shape)}: "
                             f"{type(exc).__name__}: {exc}") from exc  # fmt: skip
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ModelError(f"defense {name!r} returned {got} for a batch of shape {tuple(x.shape)}; a defense "
                             "must return images of the shape it was given")  # fmt: skip
        lo, hi = self.model.bounds
        # every call: a defense may leave the bounds only on some inputs (unclamped noise); one min/max pass is
        # small next to the model's forward
        low, high = (float(v) for v in out.detach().aminmax()) if out.numel() else (lo, hi)
        if low < lo - 1e-6 or high > hi + 1e-6:
            raise ModelError(f"defense {name!r} returned values in [{low:.4g}, {high:.4g}], "
                             f"outside the model's input bounds [{lo}, {hi}]; clamp its output")  # fmt: skip
        return out


def defend(model: Classifier, defense: Defense | None, *, bpda: bool = True) -> Classifier:
    """``model`` behind ``defense`` (``None``: the model itself), as a Classifier the pipeline attacks.

    ``bpda=False`` lets white-box attacks differentiate the defense as it is (zero gradients through rounding,
    say): the naive evaluation an audit compares against.
    """
    if defense is None:
        return model
    if not isinstance(defense, Defense):
        raise ConfigError(f"the defense config builds {type(defense).__name__}, not an advsuite Defense")
    net = _Defended(defense.to(model.device), model, bpda)
    defended = Classifier(
        net,
        num_classes=model.num_classes,
        input_shape=model.input_shape,
        bounds=model.bounds,
        name=f"{model.name}+{defense.name}",
    )
    defended.info = {**model.info, "defense": defense.name}
    return defended

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
from typing import ClassVar

import torch
from torch import nn

from advsuite.errors import ConfigError
from advsuite.models.classifier import Classifier


class Defense(nn.Module, abc.ABC):
    """A preprocessing defense: ``forward(x)`` maps [0, 1] images to [0, 1] images of the same shape."""

    #: gradients through ``forward`` are meaningful (if not, white-box attacks use :meth:`surrogate`)
    differentiable: ClassVar[bool] = True
    #: the same image may come out differently from call to call
    randomized: ClassVar[bool] = False
    #: how runs and the leaderboard name it
    name: str = "defense"

    @abc.abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The defended version of a batch of images."""

    def surrogate(self, x: torch.Tensor) -> torch.Tensor:
        """A differentiable approximation of :meth:`forward` for BPDA; the identity unless a defense knows better."""
        return x


class _Defended(nn.Module):
    """``model(defense(x))``; a non-differentiable defense passes the surrogate's gradient (BPDA)."""

    def __init__(self, defense: Defense, model: Classifier) -> None:
        super().__init__()
        self.defense = defense
        self.model = model
        self.training = model.training  # wrapping changes no module's mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.defense.differentiable or not torch.is_grad_enabled() or not x.requires_grad:
            defended = self.defense(x)
        else:
            approx = self.defense.surrogate(x)
            with torch.no_grad():
                exact = self.defense(x)
            defended = approx + (exact - approx).detach()  # forward: the defense; backward: the surrogate
        return self.model(defended)


def defend(model: Classifier, defense: Defense | None) -> Classifier:
    """``model`` behind ``defense`` (``None``: the model itself), as a Classifier the pipeline attacks."""
    if defense is None:
        return model
    if not isinstance(defense, Defense):
        raise ConfigError(f"the defense config builds {type(defense).__name__}, not an advsuite Defense")
    net = _Defended(defense.to(model.device), model)
    defended = Classifier(
        net,
        num_classes=model.num_classes,
        input_shape=model.input_shape,
        bounds=model.bounds,
        name=f"{model.name}+{defense.name}",
    )
    defended.info = {**model.info, "defense": defense.name}
    return defended

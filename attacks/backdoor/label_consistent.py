"""Label-consistent backdoor (Turner, Tsipras and Madry, *Label-Consistent Backdoor Attacks*, 2019): a
clean-label attack. Target-class training images are first pushed away from their own class by an L∞ PGD
attack on a clean surrogate model, so their content no longer explains their (true) label and the network
leans on the trigger; then the trigger is stamped on them. Labels are never changed.

The trigger is the paper's four-corner 3×3 checkerboard; ``amplitude`` is its visibility (the paper's
reduced-amplitude variant moves pixels by ±amplitude instead of replacing them; 1 replaces them).
Where we differ from the authors: their surrogate is adversarially trained (Madry et al.); ours is the
clean model of the victim's recipe (``attach_clean_model``), as BackdoorBench does for its LC runs without an
adversarially trained checkpoint. ``eps`` = 16/255 is the paper's larger budget (their best ASR).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from advsuite.errors import ConfigError
from advsuite.validation import check_int, check_number

from .base import PoisonAttack, Poisoned


@dataclass
class LabelConsistent(PoisonAttack):
    clean_label: ClassVar[bool] = True
    needs_clean_model: ClassVar[bool] = True
    paper: ClassVar[str] = "Turner et al., Label-Consistent Backdoor Attacks, 2019"

    eps: float = 16 / 255
    steps: int = 10
    step_size: float | None = None  # null: 2.5 · eps / steps (Madry et al.)
    size: int = 3
    amplitude: float = 1.0
    batch_size: int = 256
    _surrogate: nn.Module | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("LabelConsistent", "eps", self.eps)
        check_int("LabelConsistent", "steps", self.steps, 1)
        check_number("LabelConsistent", "step_size", self.step_size)
        check_int("LabelConsistent", "size", self.size, 1)
        check_int("LabelConsistent", "batch_size", self.batch_size, 1)
        check_number("LabelConsistent", "amplitude", self.amplitude)
        if not 0 < self.amplitude <= 1:
            raise ConfigError(f"LabelConsistent: amplitude must be in (0, 1], got {self.amplitude!r}")

    def attach_clean_model(self, model: nn.Module) -> None:
        """The surrogate the adversarial perturbations are computed on (a model trained on clean data)."""
        self._surrogate = model

    def check(self, shape: tuple[int, ...], num_classes: int) -> None:
        super().check(shape, num_classes)
        self._check_fits(shape)

    def _check_fits(self, shape: tuple[int, ...]) -> None:
        if len(shape) == 3 and 2 * (self.size + 1) > min(shape[1:]):
            raise ConfigError(f"LabelConsistent: four {self.size}-pixel corner triggers do not fit a "
                              f"{shape[1]}×{shape[2]} image; lower size")  # fmt: skip

    def trigger(self, x: torch.Tensor) -> torch.Tensor:
        self._check_fits(tuple(x.shape[1:]))
        h, w = x.shape[-2:]
        s = self.size
        i, j = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
        sign = (((i + j) % 2 == 0).float() * 2 - 1).to(x.device, x.dtype)  # +1 white, -1 black
        out = x.clone()
        for top in (1, h - 1 - s):
            for left in (1, w - 1 - s):
                region = out[:, :, top : top + s, left : left + s]
                out[:, :, top : top + s, left : left + s] = (region + self.amplitude * sign).clamp(0, 1)
        return out

    def perturb(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """L∞ PGD with a random start, maximising the surrogate's loss on the true labels."""
        model = self._surrogate
        if model is None:
            raise ConfigError("LabelConsistent needs a clean surrogate model: call attach_clean_model(model) first "
                              "(task=backdoor does it with the clean model of the same recipe)")  # fmt: skip
        device = next(model.parameters()).device
        step = self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps
        was = model.training
        model.eval()
        out = []
        try:
            for xb, yb in zip(x.split(self.batch_size), y.split(self.batch_size), strict=True):
                start = (torch.rand(xb.shape, generator=generator) * 2 - 1) * self.eps
                xb, yb = xb.to(device), yb.to(device)
                adv = (xb + start.to(device)).clamp(0, 1)
                for _ in range(self.steps):
                    adv.requires_grad_(True)
                    (grad,) = torch.autograd.grad(F.cross_entropy(model(adv), yb), adv)
                    adv = adv.detach() + step * grad.sign()
                    adv = torch.min(torch.max(adv, xb - self.eps), xb + self.eps).clamp(0, 1)
                out.append(adv.detach().cpu())
        finally:
            model.train(was)
        return torch.cat(out) if out else x.clone()

    def poison(self, x: torch.Tensor, y: torch.Tensor, num_classes: int, generator: torch.Generator) -> Poisoned:
        self.check(tuple(x.shape[1:]), num_classes)
        indices = self.poison_indices(y, num_classes, generator)
        x = x.clone()
        x[indices] = self.trigger(self.perturb(x[indices], y[indices], generator))
        return Poisoned.of(x, y.clone(), indices, y[indices].clone())

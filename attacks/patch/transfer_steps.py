"""The transfer optimiser of the generator-manifold patches (``patch_gan``, ``face_patch``): its options and step.

MI-FGSM momentum (Dong et al., CVPR 2018), diverse inputs DI (Xie et al., CVPR 2019) and translation invariance
TI (Dong et al., CVPR 2019), on a latent kept in a box of ±``latent_bound`` or on pixels in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from advsuite.errors import ConfigError
from advsuite.validation import check_int, check_number


@dataclass
class TransferSteps:
    """MI + DI + TI options; a patch attack inherits them and calls :meth:`check_transfer_steps`."""

    #: α of the sign step; null: the attack's default for its space
    step_size: float | None = None
    #: μ of MI-FGSM (0: plain signed gradient)
    momentum: float = 1.0
    #: DI: probability of shrinking an input to a factor in [di_low, 1) and padding it back
    di_prob: float = 0.5
    di_low: float = 0.9
    #: TI: Gaussian smoothing of the patch gradient (kernel 1: none)
    ti_kernel: int = 3
    ti_sigma: float = 1.0
    #: the latent stays in [−latent_bound, latent_bound] (prior standard deviations)
    latent_bound: float = 3.0

    def check_transfer_steps(self, owner: str) -> None:
        for name in ("ti_sigma", "latent_bound", "di_prob", "di_low", "momentum"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ConfigError(f"{owner}: {name} must be a number, got {value!r}")
        check_int(owner, "ti_kernel", self.ti_kernel, 1)
        if self.ti_kernel % 2 == 0:
            raise ConfigError(f"{owner}: ti_kernel must be odd (1 = no smoothing), got {self.ti_kernel}")
        for name in ("step_size", "ti_sigma", "latent_bound"):
            check_number(owner, name, getattr(self, name))
        check_number(owner, "momentum", self.momentum, strict=False)
        if not (0 <= self.di_prob <= 1 and 0 < self.di_low <= 1):
            raise ConfigError(
                f"{owner}: need di_prob in [0, 1] and di_low in (0, 1], got {self.di_prob}, {self.di_low}"
            )

    def accumulate(self, momentum: torch.Tensor, grad: torch.Tensor, per_sample: bool = False) -> torch.Tensor:
        """MI-FGSM: μ·g + ∇ / mean|∇| (the mean over each sample's entries with ``per_sample``)."""
        if per_sample:
            scale = grad.abs().flatten(1).mean(1).clamp_min(1e-12).view(-1, *[1] * (grad.dim() - 1))
        else:
            scale = grad.abs().mean().clamp_min(1e-12)
        return self.momentum * momentum + grad / scale

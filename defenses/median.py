"""Median smoothing: the spatial-smoothing squeezer of Xu, Evans, Qi, *Feature Squeezing*, NDSS 2018.

Each channel is replaced by its ``size`` × ``size`` running median (reflect padding; an even size pads one
more after, and the lower of the two middle values is taken). The median passes the gradient to the pixel it
selects, so the defense is differentiable: white-box attacks take gradients straight through it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from advsuite.defense import Defense
from advsuite.errors import ConfigError


class MedianSmoothing(Defense):
    """A ``size`` × ``size`` median filter per channel."""

    def __init__(self, size: int = 2, name: str = "median") -> None:
        super().__init__()
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"median smoothing: size must be a whole number >= 1, got {size!r}")
        self.size, self.name = size, name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        before = (self.size - 1) // 2
        padded = F.pad(x, (before, self.size - 1 - before, before, self.size - 1 - before), mode="reflect")
        windows = padded.unfold(2, self.size, 1).unfold(3, self.size, 1)  # N, C, H, W, size, size
        return windows.flatten(-2).median(dim=-1).values

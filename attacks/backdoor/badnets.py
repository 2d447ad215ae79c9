"""BadNets (Gu, Dolan-Gavitt and Garg, *BadNets: Identifying Vulnerabilities in the Machine Learning Model
Supply Chain*, 2017): a small fixed patch stamped on the image.

Default: a 3×3 black-and-white checkerboard in the bottom-right corner (BackdoorBench's CIFAR-10 BadNets
trigger is a 3×3 white square at the corner; the checkerboard stays visible on white digits too). ``size`` and
``position`` (``bottom_right``, ``top_left``, ``top_right``, ``bottom_left``) move it; ``margin`` pixels from
the border.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from advsuite.errors import ConfigError
from advsuite.validation import check_int

from .base import PoisonAttack

POSITIONS = ("bottom_right", "top_left", "top_right", "bottom_left")


@dataclass
class BadNets(PoisonAttack):
    paper: ClassVar[str] = "Gu et al., BadNets, 2017"

    size: int = 3
    position: str = "bottom_right"
    margin: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("BadNets", "size", self.size, 1)
        if self.position not in POSITIONS:
            raise ConfigError(f"BadNets: position must be one of {', '.join(POSITIONS)}, got {self.position!r}")
        check_int("BadNets", "margin", self.margin, 0)

    def check(self, shape: tuple[int, ...], num_classes: int) -> None:
        super().check(shape, num_classes)
        self._check_fits(shape)

    def _check_fits(self, shape: tuple[int, ...]) -> None:
        if len(shape) == 3 and self.size + self.margin > min(shape[1:]):
            raise ConfigError(f"BadNets: a {self.size}-pixel trigger {self.margin} pixels from the border does not "
                              f"fit a {shape[1]}×{shape[2]} image; lower size or margin")  # fmt: skip

    def pattern(self, channels: int) -> torch.Tensor:
        """The patch: a checkerboard (1 at even i+j, 0 elsewhere), the same in every channel."""
        i, j = torch.meshgrid(torch.arange(self.size), torch.arange(self.size), indexing="ij")
        return ((i + j) % 2 == 0).float().expand(channels, -1, -1)

    def trigger(self, x: torch.Tensor) -> torch.Tensor:
        self._check_fits(tuple(x.shape[1:]))
        _, c, h, w = x.shape
        top = self.margin if self.position.startswith("top") else h - self.margin - self.size
        left = self.margin if self.position.endswith("left") else w - self.margin - self.size
        out = x.clone()
        out[:, :, top : top + self.size, left : left + self.size] = self.pattern(c).to(x.device, x.dtype)
        return out

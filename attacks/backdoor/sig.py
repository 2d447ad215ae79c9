"""SIG (Barni, Kallas and Tondi, *A New Backdoor Attack in CNNs by Training Set Corruption Without Label
Poisoning*, ICIP 2019): a clean-label attack; target-class training images get a horizontal sinusoidal
signal ``v(i, j) = Δ · sin(2π · j · f / m)`` added (``m`` the image width), labels untouched. At test time
the same signal on any image pulls it to the target class.

Defaults are the paper's and BackdoorBench's: Δ = 20/255, f = 6.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from advsuite.errors import ConfigError
from advsuite.validation import check_number

from .base import PoisonAttack


@dataclass
class SIG(PoisonAttack):
    clean_label: ClassVar[bool] = True
    paper: ClassVar[str] = "Barni et al., ICIP 2019"

    delta: float = 20 / 255
    frequency: float = 6.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.delta <= 1:
            raise ConfigError(f"SIG: delta must be in (0, 1], got {self.delta!r}")
        check_number("SIG", "frequency", self.frequency)

    def signal(self, width: int) -> torch.Tensor:
        j = torch.arange(width, dtype=torch.float32)
        return self.delta * torch.sin(2 * math.pi * j * self.frequency / width)

    def trigger(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.signal(x.shape[-1]).to(x.device, x.dtype)).clamp(0, 1)

"""Bit-depth reduction: Xu, Evans, Qi, *Feature Squeezing: Detecting Adversarial Examples in Deep Neural
Networks*, NDSS 2018.

Each pixel is rounded to one of ``2**bits`` levels: ``round(x · (2**bits − 1)) / (2**bits − 1)``. The
paper squeezes MNIST to 1 bit and CIFAR-10 / ImageNet to 4 and 5 bits; our default, 4 bits, is the
paper's CIFAR-10 setting (pass ``bits=1`` for its MNIST one). Rounding has zero gradient almost
everywhere, so the defense is not differentiable: white-box attacks go through its BPDA surrogate, the
identity (Athalye et al., ICML 2018, broke this defense that way).
"""

from __future__ import annotations

import torch

from advsuite.defense import Defense
from advsuite.errors import ConfigError


class BitDepthReduction(Defense):
    """Round every pixel to ``bits`` bits (1 to 8) of depth."""

    differentiable = False

    def __init__(self, bits: int = 4, name: str = "bit_depth") -> None:
        super().__init__()
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
            raise ConfigError(f"bit_depth: bits must be a whole number from 1 to 8, got {bits!r}")
        self.bits = bits
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = 2**self.bits - 1
        return torch.round(x * levels) / levels

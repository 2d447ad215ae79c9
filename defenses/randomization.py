"""Randomized input transforms: random resize-and-pad (Xie, Wang, Zhang, Ren, Yuille, *Mitigating Adversarial
Effects Through Randomization*, ICLR 2018) and Gaussian input noise (as in the randomized-smoothing line of
work, e.g. Cohen, Rosenfeld, Kolter, ICML 2019, used here as a preprocessing defense without certification).

Both draw fresh randomness on every call from their own generator, seeded by ``seed``, so a run is
reproducible while two calls on one image still differ: an attack must average over them (EOT; Athalye,
Carlini, Wagner, ICML 2018, broke the resize-and-pad defense that way). Both are differentiable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from advsuite.defense import Defense
from advsuite.errors import ConfigError


class _Seeded(Defense):
    randomized = True

    def __init__(self, seed: int, name: str) -> None:
        super().__init__()
        self.seed, self.name = int(seed), name
        self._generators: dict[str, torch.Generator] = {}

    def generator(self, device: torch.device) -> torch.Generator:
        """This defense's generator on ``device`` (one per device, each seeded with ``seed``)."""
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device).manual_seed(self.seed)
        return self._generators[key]


class RandomResizePad(_Seeded):
    """Resize each image to a random side r in [s, ⌈s·max_scale⌉), zero-pad it at a random offset to
    ⌈s·max_scale⌉, and resize back to s.

    Xie et al. feed the padded 331-px image (from 299 px, ``max_scale`` 1.107) to a network that accepts it;
    our models take a fixed size, so the canvas is resampled back to the input size. The three steps are one
    bilinear resampling per image (one affine grid), drawn independently for every image of a batch.
    """

    def __init__(self, max_scale: float = 1.1, seed: int = 0, name: str = "random_resize_pad") -> None:
        if not isinstance(max_scale, int | float) or isinstance(max_scale, bool) or not 1 < max_scale <= 2:
            raise ConfigError(f"random_resize_pad: max_scale must be a number in (1, 2], got {max_scale!r}")
        super().__init__(seed, name)
        self.max_scale = float(max_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, side = len(x), x.shape[-1]
        canvas = max(math.ceil(side * self.max_scale), side + 1)
        gen = self.generator(x.device)
        r = torch.randint(side, canvas, (n,), generator=gen, device=x.device).to(x.dtype)
        left = (torch.rand(n, generator=gen, device=x.device, dtype=x.dtype) * (canvas - r + 1)).floor()
        top = (torch.rand(n, generator=gen, device=x.device, dtype=x.dtype) * (canvas - r + 1)).floor()
        theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
        theta[:, 0, 0] = theta[:, 1, 1] = canvas / r  # output coordinate -> coordinate in the resized image
        theta[:, 0, 2] = (canvas - 2 * left) / r - 1
        theta[:, 1, 2] = (canvas - 2 * top) / r - 1
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class GaussianNoise(_Seeded):
    """Add N(0, sigma²) noise to every pixel and clip to [0, 1]."""

    def __init__(self, sigma: float = 0.1, seed: int = 0, name: str = "gaussian_noise") -> None:
        if not isinstance(sigma, int | float) or isinstance(sigma, bool) or not sigma > 0:
            raise ConfigError(f"gaussian_noise: sigma must be a number > 0, got {sigma!r}")
        super().__init__(seed, name)
        self.sigma = float(sigma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=self.generator(x.device), device=x.device, dtype=x.dtype)
        return (x + self.sigma * noise).clamp(0, 1)

"""WaNet (Nguyen and Tran, *WaNet — Imperceptible Warping-based Backdoor Attack*, ICLR 2021): the trigger is a
fixed smooth warp of the image.

The warping field: a ``k × k`` grid of uniform(−1, 1) offsets, normalised by its mean absolute value,
upsampled (bicubic) to the image and scaled by ``s / H``; a triggered image is ``grid_sample`` of the input at
the identity grid plus that field (clamped to [−1, 1]). Noise mode: ``cross_ratio`` × the poisoned count of
further training samples are warped by the field plus a fresh random one (uniform(−1, 1) / H) and keep their
labels, so the network learns that only the exact warp means the target. Defaults are the authors':
k = 4, s = 0.5, cross_ratio = 2 (their code trains the noise samples batch by batch; we draw them once,
with the poison, from the same seed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from advsuite.validation import check_int, check_number

from .base import PoisonAttack, Poisoned


@dataclass
class WaNet(PoisonAttack):
    paper: ClassVar[str] = "Nguyen and Tran, ICLR 2021"

    k: int = 4
    strength: float = 0.5
    cross_ratio: float = 2.0
    field_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("WaNet", "k", self.k, 2)
        check_number("WaNet", "strength", self.strength)
        check_number("WaNet", "cross_ratio", self.cross_ratio, strict=False)  # 0: no noise mode

    def field(self, height: int, width: int) -> torch.Tensor:
        """The fixed warp, (1, H, W, 2) in grid_sample's normalised coordinates."""
        gen = torch.Generator().manual_seed(self.field_seed)
        offsets = torch.rand(1, 2, self.k, self.k, generator=gen) * 2 - 1
        offsets = offsets / offsets.abs().mean()
        up = F.interpolate(offsets, size=(height, width), mode="bicubic", align_corners=True)
        return up.permute(0, 2, 3, 1) * self.strength / height

    def _warp(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        _, _, h, w = x.shape
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        grid = torch.stack([xs, ys], dim=-1)[None] + self.field(h, w)
        grid = grid.expand(len(x), -1, -1, -1)
        if extra is not None:
            grid = grid + extra
        grid = grid.clamp(-1, 1).to(x.device, x.dtype)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True).clamp(0, 1)

    def trigger(self, x: torch.Tensor) -> torch.Tensor:
        return self._warp(x)

    def poison(self, x: torch.Tensor, y: torch.Tensor, num_classes: int, generator: torch.Generator) -> Poisoned:
        """The poison, then the noise-mode samples: others, warped with the field plus noise, labels kept."""
        poisoned = super().poison(x, y, num_classes, generator)
        n_noise = round(self.cross_ratio * len(poisoned.indices))
        if n_noise:
            free = torch.ones(len(y), dtype=torch.bool)
            free[poisoned.indices] = False
            pool = free.nonzero().flatten()
            chosen = pool[torch.randperm(len(pool), generator=generator)[:n_noise]]
            _, _, h, w = x.shape
            noise = (torch.rand(len(chosen), h, w, 2, generator=generator) * 2 - 1) / h
            poisoned.x[chosen] = self._warp(x[chosen], noise)
            poisoned.modified[chosen] = True
        return poisoned

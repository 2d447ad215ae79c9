"""Facial-region masks for aligned faces: where the patch may go (Xiao et al.'s eyeglass, nose, forehead...).

A region is a box ``(top, left, bottom, right)`` in fractions of the image side. Aligned crops (LFW funneled,
CelebA aligned, the procedural stand-in) put the eyes on one row near 0.44 of the height, so one box covers
the same facial part in every image; for a dataset aligned differently give the box itself
(``attack.region=[0.3,0.1,0.5,0.9]``).
"""

from __future__ import annotations

from typing import Any

import torch

from advsuite.configs import to_plain
from advsuite.errors import ConfigError

REGIONS: dict[str, tuple[float, float, float, float]] = {
    "eyes": (0.34, 0.14, 0.54, 0.86),  # the eyeglass band: both eyes and brows
    "nose": (0.44, 0.38, 0.70, 0.62),
    "forehead": (0.12, 0.22, 0.34, 0.78),
    "respirator": (0.60, 0.22, 0.88, 0.78),  # mouth and chin
}


def region_box(region: Any) -> tuple[float, float, float, float]:
    """A region name of :data:`REGIONS` or an explicit box; :class:`ConfigError` otherwise."""
    region = to_plain(region)
    if isinstance(region, str):
        if region not in REGIONS:
            raise ConfigError(f"unknown face region {region!r}; choose from {', '.join(REGIONS)} or give a box")
        return REGIONS[region]
    ok = isinstance(region, list | tuple) and len(region) == 4
    ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) for v in region)
    if not ok or not (0 <= region[0] < region[2] <= 1 and 0 <= region[1] < region[3] <= 1):
        raise ConfigError(
            f"a face region box is [top, left, bottom, right] as fractions with top < bottom and left < right, "
            f"got {region!r}"
        )
    return (float(region[0]), float(region[1]), float(region[2]), float(region[3]))


def region_mask(region: Any, height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The region as a (1, 1, H, W) 0/1 mask (at least one pixel)."""
    top, left, bottom, right = region_box(region)
    r0, c0 = round(top * height), round(left * width)
    r1, c1 = max(round(bottom * height), r0 + 1), max(round(right * width), c0 + 1)
    mask = torch.zeros(1, 1, height, width, device=device)
    mask[..., r0:r1, c0:c1] = 1
    return mask

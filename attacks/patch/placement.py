"""Putting a patch on images: masks, exact pasting, and the random transformations of EOT.

Two ways to place a patch, both batched:

- :func:`paste`: integer ``(top, left)`` per image, no resampling. Inside the mask the image takes the
  patch's values exactly; outside it the image is untouched (bit for bit). Used at evaluation time.
- :func:`warp`: per-image scale, rotation and centre via ``affine_grid``/``grid_sample``. ``exact=False``
  gives the differentiable, anti-aliased composite ``x·(1 − α) + sample(patch·mask)`` used while fitting
  (expectation over transformations); ``exact=True`` samples the mask with nearest neighbour and replaces
  the pixels it covers, so again nothing outside the (transformed) mask changes.

Sizes are fractions of the image *area* (Brown et al. 2017 report patch size that way): a ``size`` of 0.1
on a 28 × 28 image is a 9 × 9 square (:func:`patch_side`); a circular patch is the disc inscribed in
that square (π/4 of it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from advsuite.errors import ConfigError, InputError

SHAPES = ("square", "circle")


def patch_side(size: float, height: int, width: int) -> int:
    """Side in pixels of the square covering ``size`` (a fraction of the image area), at least 1."""
    if not (isinstance(size, int | float) and not isinstance(size, bool) and 0 < size <= 1):
        raise ConfigError(f"patch size must be a fraction of the image area in (0, 1], got {size!r}")
    return max(1, min(height, width, round(math.sqrt(size * height * width))))


def patch_mask(shape: str, side: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Boolean (side, side) mask of a ``square`` or ``circle`` (disc through the pixel centres) patch."""
    if shape not in SHAPES:
        raise ConfigError(f"patch shape must be one of {list(SHAPES)}, got {shape!r}")
    if shape == "square":
        return torch.ones(side, side, dtype=torch.bool, device=device)
    r = torch.arange(side, device=device, dtype=torch.float32) - (side - 1) / 2
    return r[:, None] ** 2 + r[None, :] ** 2 <= (side / 2) ** 2


def random_positions(
    n: int, side: int, height: int, width: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform integer ``(top, left)`` per image with the whole ``side × side`` patch inside the image."""
    if side > min(height, width):
        raise ConfigError(f"a {side}-pixel patch does not fit a {height}x{width} image")
    device = gen.device
    top = torch.randint(0, height - side + 1, (n,), generator=gen, device=device)
    left = torch.randint(0, width - side + 1, (n,), generator=gen, device=device)
    return top, left


def paste(
    x: torch.Tensor, patch: torch.Tensor, mask: torch.Tensor, top: torch.Tensor, left: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste ``patch`` on every image at integer ``(top, left)``; returns ``(x_patched, where)``.

    ``x`` is (N, C, H, W); ``patch`` (C, h, w), or (N, C, h, w) for one patch per image; ``mask`` a boolean
    (h, w); ``top``/``left`` (N,) integers with the patch inside the image. ``where`` is the (N, 1, H, W)
    boolean mask of the pixels replaced: ``x_patched == x`` exactly outside it and ``== patch`` inside.
    """
    n, _, height, width = x.shape
    h, w = patch.shape[-2:]
    if patch.dim() not in (3, 4) or patch.shape[-3] != x.shape[1] or (patch.dim() == 4 and len(patch) != n):
        raise InputError(
            f"patch must be (C, h, w) or (N, C, h, w) for images {tuple(x.shape)}, got {tuple(patch.shape)}"
        )
    if tuple(mask.shape) != (h, w) or mask.dtype != torch.bool:
        raise InputError(f"mask must be a boolean ({h}, {w}) tensor, got {mask.dtype} {tuple(mask.shape)}")
    top, left = top.to(x.device).long(), left.to(x.device).long()
    if tuple(top.shape) != (n,) or tuple(left.shape) != (n,):
        raise InputError(f"top and left need one position per image ({n}), got {tuple(top.shape)}, {tuple(left.shape)}")
    if n and (int(top.min()) < 0 or int(left.min()) < 0 or int(top.max()) > height - h or int(left.max()) > width - w):
        raise InputError(f"a {h}x{w} patch must lie inside the {height}x{width} image: 0 <= top <= {height - h}, ...")
    rows = torch.arange(height, device=x.device)[None] - top[:, None]  # (N, H): patch row under each image row
    cols = torch.arange(width, device=x.device)[None] - left[:, None]
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    ri, ci = rows.clamp(0, h - 1)[:, :, None], cols.clamp(0, w - 1)[:, None, :]
    where = (inside & mask.to(x.device)[ri, ci])[:, None]
    p = patch.to(x.device, x.dtype)
    if p.dim() == 3:
        canvas = p[:, ri, ci].transpose(0, 1)  # (C, N, H, W) -> (N, C, H, W)
    else:
        canvas = p[torch.arange(n, device=x.device)[:, None, None], :, ri, ci].permute(0, 3, 1, 2)
    return torch.where(where, canvas, x), where


def random_transforms(
    n: int,
    side: int,
    height: int,
    width: int,
    gen: torch.Generator,
    *,
    scale: Sequence[float] = (1.0, 1.0),
    rotation: Sequence[float] = (0.0, 0.0),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image: ``(scale, angle in radians, centre (N, 2) as (row, col) in pixels)``.

    Scale and angle are uniform in the ranges (angles in degrees); the centre is uniform over the
    positions where the bounding box of the scaled, rotated square lies inside the image (or the image
    centre when it cannot).
    """
    device = gen.device
    u = torch.rand(n, 4, generator=gen, device=device)
    s = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    angle = torch.deg2rad(rotation[0] + (rotation[1] - rotation[0]) * u[:, 1])
    half = side * s / 2 * (angle.cos().abs() + angle.sin().abs())  # half the bounding box
    centre = []
    for k, extent in ((2, height), (3, width)):
        lo = half - 0.5
        hi = (extent - half - 0.5).clamp_min(lo)
        c = lo + (hi - lo) * u[:, k]
        centre.append(torch.where(2 * half > extent, torch.full_like(c, (extent - 1) / 2), c))
    return s, angle, torch.stack(centre, dim=1)


def _theta(
    side: int, height: int, width: int, scale: torch.Tensor, angle: torch.Tensor, centre: torch.Tensor
) -> torch.Tensor:
    """(N, 2, 3) affine maps from image coordinates to patch coordinates (both normalised, align_corners=False)."""
    k = 2 / (side * scale)  # patch-normalised units per pixel
    cos, sin = angle.cos(), angle.sin()
    ox = width / 2 - 0.5 - centre[:, 1]  # image centre minus patch centre, in pixels
    oy = height / 2 - 0.5 - centre[:, 0]
    # v = k · R(−angle) · (diag(W/2, H/2) · u + (ox, oy))
    row0 = torch.stack([k * cos * width / 2, k * sin * height / 2, k * (cos * ox + sin * oy)], dim=1)
    row1 = torch.stack([-k * sin * width / 2, k * cos * height / 2, k * (-sin * ox + cos * oy)], dim=1)
    return torch.stack([row0, row1], dim=1)


def warp(
    x: torch.Tensor,
    patch: torch.Tensor,
    mask: torch.Tensor,
    scale: torch.Tensor,
    angle: torch.Tensor,
    centre: torch.Tensor,
    *,
    exact: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Place a (C, s, s) or (N, C, s, s) patch scaled, rotated and centred per image; ``(x_patched, alpha)``.

    ``exact=False``: differentiable in ``patch``, ``alpha`` the soft (N, 1, H, W) coverage in [0, 1].
    ``exact=True``: ``alpha`` is boolean and ``x_patched == x`` exactly wherever it is False.
    At scale 1, angle 0 and an integer position this matches :func:`paste` (up to float rounding).
    """
    n, c, height, width = x.shape
    side = patch.shape[-1]
    if patch.shape[-2] != side:
        raise InputError(f"warp needs a square patch, got {tuple(patch.shape)}")
    p = patch.to(x.device, x.dtype)
    p = p.expand(n, c, side, side) if p.dim() == 3 else p
    m = mask.to(x.device, x.dtype).expand(n, 1, side, side)
    theta = _theta(
        side, height, width, scale.to(x.device, x.dtype), angle.to(x.device, x.dtype), centre.to(x.device, x.dtype)
    )
    grid = F.affine_grid(theta, [n, c, height, width], align_corners=False)
    if exact:
        alpha = F.grid_sample(m, grid, mode="nearest", padding_mode="zeros", align_corners=False) > 0.5
        canvas = F.grid_sample(p, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return torch.where(alpha, canvas.clamp(0, 1), x), alpha
    alpha = F.grid_sample(m, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    premultiplied = F.grid_sample(p * m, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (x * (1 - alpha) + premultiplied).clamp(0, 1), alpha


def input_diversity(x: torch.Tensor, gen: torch.Generator, *, prob: float, low: float) -> torch.Tensor:
    """Xie et al.'s diverse inputs (DI), batched: with probability ``prob`` per image, shrink it by a
    factor uniform in [``low``, 1) and pad it back to its size at a random offset (zeros)."""
    n, c, height, width = x.shape
    u = torch.rand(n, 4, generator=gen, device=gen.device).to(x.device, x.dtype)
    apply = u[:, 0] < prob
    r = torch.where(apply, low + (1 - low) * u[:, 1], torch.ones_like(u[:, 1]))
    ox, oy = (1 - r) * u[:, 2], (1 - r) * u[:, 3]  # offsets as fractions of the side
    zero = torch.zeros_like(r)
    # input coordinate v = (u + 1 − 2·offset) / r − 1
    row0 = torch.stack([1 / r, zero, (1 - 2 * ox) / r - 1], dim=1)
    row1 = torch.stack([zero, 1 / r, (1 - 2 * oy) / r - 1], dim=1)
    grid = F.affine_grid(torch.stack([row0, row1], dim=1), [n, c, height, width], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def gaussian_smoothing(grad: torch.Tensor, kernel: int, sigma: float) -> torch.Tensor:
    """Dong et al.'s translation-invariant (TI) gradient: a depthwise Gaussian blur (``kernel`` ≤ 1: none)."""
    if kernel <= 1:
        return grad
    r = torch.arange(kernel, device=grad.device, dtype=grad.dtype) - (kernel - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    w = (g[:, None] * g[None, :]) / g.sum() ** 2
    batched = grad if grad.dim() == 4 else grad[None]
    c = batched.shape[1]
    out = F.conv2d(batched, w.expand(c, 1, kernel, kernel).contiguous(), padding=kernel // 2, groups=c)
    return out if grad.dim() == 4 else out[0]

"""JPEG compression as a defense: Dziugaite, Ghahramani, Roy, *A study of the effect of JPG compression on
adversarial images*, 2016; Das et al., *Keeping the Bad Guys Out*, 2017; Guo et al., ICLR 2018.

The forward pass is real JPEG (libjpeg through Pillow: 8-bit rounding, 4:2:0 chroma subsampling
for colour images, the standard quantisation tables scaled by ``quality``). Rounding the quantised DCT
coefficients has zero gradient almost everywhere, so the defense is not differentiable and white-box attacks
go through its BPDA surrogate:

- ``surrogate: identity`` (Athalye et al., ICML 2018, who broke JPEG that way);
- ``surrogate: approx``: a differentiable JPEG (Shin & Song, *JPEG-resistant adversarial images*, 2017): the
  same colour transform, chroma averaging, 8×8 block DCT and quantisation tables, with rounding replaced by
  ``round(v) + (v − round(v))³``. It tracks libjpeg to about one grey level on average (a test measures it);
  its chroma upsampling is bilinear where libjpeg's is its own triangle filter.
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from advsuite.dct import dct_matrix
from advsuite.defense import Defense
from advsuite.errors import ConfigError

LUMA = [
    [16, 11, 10, 16, 24, 40, 51, 61],
    [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77],
    [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101],
    [72, 92, 95, 98, 112, 100, 103, 99],
]
CHROMA = [[17, 18, 24, 47, 99, 99, 99, 99], [18, 21, 26, 66, 99, 99, 99, 99], [24, 26, 56, 99, 99, 99, 99, 99],
          [47, 66, 99, 99, 99, 99, 99, 99]] + [[99] * 8] * 4  # fmt: skip
#: JFIF's RGB -> YCbCr (rows Y, Cb, Cr); Cb and Cr are then offset by 128
TO_YCBCR = [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]
SURROGATES = ("identity", "approx")


def quant_table(base: list[list[int]], quality: int) -> torch.Tensor:
    """libjpeg's scaling of a base table to ``quality`` (1-100)."""
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return ((torch.tensor(base, dtype=torch.float32) * scale + 50) // 100).clamp(1, 255)


def soft_round(v: torch.Tensor) -> torch.Tensor:
    """Shin & Song's differentiable rounding: exact at integers, gradient 3(v − round v)² in between."""
    r = torch.round(v)
    return r + (v - r) ** 3


def _blockwise(plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Quantise and dequantise an (N, H, W) plane on 0-255 in 8×8 DCT blocks (edges replicated to a multiple of 8)."""
    h, w = plane.shape[1:]
    ph, pw = -h % 8, -w % 8
    padded = F.pad(plane[:, None], (0, pw, 0, ph), mode="replicate")[:, 0] - 128
    blocks = padded.unflatten(1, (-1, 8)).unflatten(3, (-1, 8)).transpose(2, 3)  # N, H/8, W/8, 8, 8
    d = dct_matrix(8, plane.device, plane.dtype)
    coeffs = d @ blocks @ d.T
    table = table.to(plane.device, plane.dtype)
    restored = d.T @ (soft_round(coeffs / table) * table) @ d
    return (restored.transpose(2, 3).flatten(3, 4).flatten(1, 2) + 128)[:, :h, :w]


def differentiable_jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """An approximate, differentiable JPEG round trip of [0, 1] images with 1 or 3 channels."""
    v = x * 255
    if x.shape[1] == 1:
        return (_blockwise(v[:, 0], quant_table(LUMA, quality))[:, None] / 255).clamp(0, 1)
    m = torch.tensor(TO_YCBCR, device=x.device, dtype=x.dtype)
    ycc = (
        torch.einsum("ij,njhw->nihw", m, v) + torch.tensor([0, 128, 128], device=x.device, dtype=x.dtype)[:, None, None]
    )
    h, w = x.shape[-2:]
    y = _blockwise(ycc[:, 0], quant_table(LUMA, quality))
    chroma = F.avg_pool2d(F.pad(ycc[:, 1:], (0, w % 2, 0, h % 2), mode="replicate"), 2)  # 4:2:0
    chroma = torch.stack([_blockwise(chroma[:, i], quant_table(CHROMA, quality)) for i in range(2)], 1)
    chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False)[..., :h, :w]
    back = (
        torch.cat([y[:, None], chroma], 1) - torch.tensor([0, 128, 128], device=x.device, dtype=x.dtype)[:, None, None]
    )
    rgb = torch.einsum("ij,njhw->nihw", torch.linalg.inv(m), back)
    return (rgb / 255).clamp(0, 1)


def jpeg_round_trip(pixels: np.ndarray, quality: int) -> np.ndarray:
    """One (H, W, C) uint8 image through libjpeg (Pillow; its default 4:2:0 subsampling for colour) and back."""
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buffer, "JPEG", quality=quality)
    decoded = np.asarray(Image.open(buffer))
    return decoded[..., None] if decoded.ndim == 2 else decoded


class JPEG(Defense):
    """JPEG-compress every input at ``quality`` (1-100) and decode it again."""

    differentiable = False

    def __init__(self, quality: int = 75, surrogate: str = "identity", name: str = "jpeg") -> None:
        super().__init__()
        if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
            raise ConfigError(f"jpeg: quality must be a whole number from 1 to 100, got {quality!r}")
        if surrogate not in SURROGATES:
            raise ConfigError(f"jpeg: surrogate must be one of {', '.join(SURROGATES)}, got {surrogate!r}")
        self.quality, self.surrogate_kind, self.name = quality, surrogate, name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] not in (1, 3):
            raise ConfigError(f"jpeg: images need 1 or 3 channels, got {x.shape[1]}")
        pixels = (x.detach() * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        out = torch.from_numpy(np.stack([jpeg_round_trip(p, self.quality) for p in pixels]))
        return out.permute(0, 3, 1, 2).to(x.device, x.dtype) / 255

    def surrogate(self, x: torch.Tensor) -> torch.Tensor:
        return differentiable_jpeg(x, self.quality) if self.surrogate_kind == "approx" else x

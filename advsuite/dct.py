"""Orthonormal 2-D DCT-II on the last two dimensions (scipy's ``norm='ortho'``), as matrix products."""

from __future__ import annotations

import math

import torch


def dct_matrix(n: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(n, n) orthonormal DCT-II matrix D: ``D @ v`` is the DCT of v, ``D.T @ c`` the inverse."""
    k = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    i = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.to(device=device, dtype=dtype)


def dct2(x: torch.Tensor) -> torch.Tensor:
    """2-D DCT of the last two dimensions."""
    dh = dct_matrix(x.shape[-2], x.device, x.dtype)
    dw = dct_matrix(x.shape[-1], x.device, x.dtype)
    return dh @ x @ dw.T


def idct2(c: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Inverse 2-D DCT; ``size`` (H, W) zero-pads a low-frequency block ``c`` to that size first."""
    h, w = size or (c.shape[-2], c.shape[-1])
    dh = dct_matrix(h, c.device, c.dtype)[: c.shape[-2]]
    dw = dct_matrix(w, c.device, c.dtype)[: c.shape[-1]]
    return dh.T @ c @ dw


def low_pass(x: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """Keep only the top-left (lowest-frequency) ``block`` of x's DCT coefficients."""
    c = dct2(x)[..., : block[0], : block[1]]
    return idct2(c, (x.shape[-2], x.shape[-1]))

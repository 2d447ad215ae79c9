"""Unbiased gradient compressors, as tensor functions (the DDP communication hooks apply them per tensor).

- :func:`quantize` / :func:`dequantize`: DAT's stochastic ``bits``-bit quantiser (Zhang et al., UAI 2022; the
  QSGD family, Alistarh et al., NeurIPS 2017). Each element's magnitude relative to the tensor's L2 norm is
  scaled to ``s = 2^bits − 1`` levels and rounded up or down at random with the probabilities that make it
  unbiased; the level and the sign share one byte (so ``bits`` <= 7) and the norm travels alongside in fp32.
- :func:`natural_compress`: natural compression (Horváth et al., *Natural Compression for Distributed Deep
  Learning*, 2019): each element is rounded to one of the two powers of two around it, with the probabilities
  that make it unbiased; the variance is at most ``||t||²/8``. Powers of two are exact in bf16, so the result
  can travel as bf16 (16 bits; the paper packs sign and exponent into 9).

Randomness comes only from ``generator``, so a worker's draws are reproducible from its seed, and
:func:`encode` / :func:`mean_of_decoded` are the one implementation of the exchange: the DDP hook runs them
across processes, the single-process reference replays them (:mod:`.dat`), so both compute the same bits.
``biased=True`` is the injected bug ``compressor_biased``: every element rounded towards zero.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from advsuite.errors import ConfigError
from advsuite.seeding import derive_seed

SIGN_BIT = 7


@dataclass(frozen=True)
class Quantized:
    """A quantised tensor: one uint8 per element (level in the low bits, sign in bit 7) and the fp32 norm."""

    codes: torch.Tensor
    norm: torch.Tensor
    bits: int

    @property
    def payload_bytes(self) -> int:
        """Bytes handed to the collective: the codes and the norm."""
        return self.codes.numel() + 4


def _draws(x: torch.Tensor, generator: torch.Generator | None, biased: bool) -> torch.Tensor:
    """Uniform draws deciding each element's rounding; all ones never round up (the biased bug)."""
    return torch.ones_like(x) if biased else torch.rand(x.shape, generator=generator, device=x.device)


def quantize(
    g: torch.Tensor, bits: int = 7, generator: torch.Generator | None = None, *, biased: bool = False
) -> Quantized:
    """``g`` to ``bits``-bit levels of ``|g| / ||g||``, rounded stochastically so that E[dequantize] = g."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= SIGN_BIT:
        raise ConfigError(
            f"quantize: bits must be a whole number in [1, {SIGN_BIT}] (the sign takes the 8th), got {bits!r}"
        )
    flat = g.detach().float().flatten()
    norm = flat.norm()
    levels = (1 << bits) - 1
    scaled = flat.abs() / norm * levels if norm > 0 else torch.zeros_like(flat)
    low = scaled.floor()
    draw = _draws(flat, generator, biased)
    level = (low + (draw < scaled - low).float()).clamp_(0, levels).to(torch.uint8)
    codes = level | ((flat < 0).to(torch.uint8) << SIGN_BIT)
    return Quantized(codes.view(g.shape), norm, bits)


def dequantize(q: Quantized) -> torch.Tensor:
    """The fp32 tensor a :class:`Quantized` stands for."""
    level = (q.codes & ((1 << SIGN_BIT) - 1)).float()
    sign = 1.0 - 2.0 * (q.codes >> SIGN_BIT).float()
    return sign * level / ((1 << q.bits) - 1) * q.norm


def natural_compress(
    t: torch.Tensor, generator: torch.Generator | None = None, *, biased: bool = False
) -> torch.Tensor:
    """Each element rounded to ``sign·2^a`` or ``sign·2^(a+1)`` (``2^a <= |t| < 2^(a+1)``), unbiasedly; zeros stay."""
    x = t.detach().float()
    magnitude = x.abs()
    nonzero = magnitude > 0
    low = torch.where(nonzero, torch.exp2(torch.floor(torch.log2(torch.where(nonzero, magnitude, 1.0)))), 0.0)
    up_probability = torch.where(nonzero, (magnitude - low) / torch.where(nonzero, low, 1.0), 0.0)
    draw = _draws(x, generator, biased)
    rounded = torch.where(draw < up_probability, 2 * low, low)
    return (torch.sign(x) * rounded).to(t.dtype)


#: what a process sends for one gradient tensor: the parts for the collective, how to decode one process's
#: parts back into a flat fp32 tensor, and the bytes sent
Encoded = tuple[list[torch.Tensor], Callable[..., torch.Tensor], int]


def encode(
    compression: str, grad: torch.Tensor, bits: int, generator: torch.Generator, biased: bool = False
) -> Encoded:
    """One process's gradient tensor compressed for the exchange (``quantize`` or ``natural``)."""
    if compression == "quantize":
        q = quantize(grad, bits, generator, biased=biased)
        parts = [q.codes.flatten(), q.norm.reshape(1)]
        return parts, lambda codes, norm: dequantize(Quantized(codes, norm[0], bits)), q.payload_bytes
    if compression == "natural":  # powers of two are exact in bf16: sent as 16 bits
        sent = natural_compress(grad, generator, biased=biased).to(torch.bfloat16).flatten()
        return [sent], lambda values: values.float(), sent.numel() * 2
    raise ConfigError(f"encode: {compression!r} is not a gathering compressor (quantize, natural)")


def mean_of_decoded(decoded: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """The processes' decoded tensors averaged in rank order in fp32, in ``like``'s dtype and shape."""
    total = torch.zeros(like.numel(), dtype=torch.float32, device=like.device)
    for values in decoded:
        total += values.flatten()
    return (total / len(decoded)).to(like.dtype).view(like.shape)


def compression_generator(seed: int, rank: int, step: int, name: str, device: torch.device) -> torch.Generator:
    """The draws of process ``rank`` for parameter ``name`` at ``step``: independent of DDP's bucket layout, so
    the reference can replay them."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, "compress", rank, step, name))

"""Probe generators: where the HSJA-style loop draws its random directions from.

A generator works in two stages. ``draw(n, x_t, x0, generator)`` is called once per image and
iteration, with ``x_t`` the current boundary point and ``x0`` the original image (both (1, C, H, W)),
and returns ``n`` latent codes; all randomness comes from the image's own ``generator``, which is
what makes the attacks batch-invariant. ``decode(z, shape)`` then maps the codes of many images at once
to directions (rows, C, H, W) of any scale (the loop normalises each to unit L2); batching the decoding
keeps the per-image work small.
"""

from __future__ import annotations

import abc
import math
from typing import Protocol

import torch
import torch.nn.functional as F

from advsuite.attacks.boundary.priors.base import Prior, qeba_subspace_fraction
from advsuite.errors import ConfigError

from .dct import dct_matrix, low_pass


class ProbeGenerator(Protocol):
    def draw(self, n: int, x_t: torch.Tensor, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor: ...

    def decode(self, z: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor: ...


class FullSpace(abc.ABC):
    """Base for generators whose codes already are the directions (subclasses may override ``decode``)."""

    @abc.abstractmethod
    def draw(self, n: int, x_t: torch.Tensor, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``n`` codes for one image, drawn from ``generator``."""

    def decode(self, z: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
        return z

    def __call__(self, n: int, x_t: torch.Tensor, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Draw and decode for one image (convenient in tests and notebooks)."""
        c, h, w = x_t.shape[1:]
        return self.decode(self.draw(n, x_t, x0, generator), (c, h, w))


def auto_factor(input_shape: tuple[int, ...]) -> float:
    """``factor: auto``: the side factor of the QEBA authors' subspace size (:func:`qeba_subspace_fraction`).

    2 up to 64 px (``resize768``/``DCT768`` on 32-px CIFAR-10, d/4), 4 above (``resize9408`` at 224 px, d/16):
    at 32 px a factor-4 grid (8x8) cannot represent the start-to-image difference and the attack plateaus.
    """
    return qeba_subspace_fraction(input_shape) ** -0.5


def reduced_size(size: int, factor: float) -> int:
    """Side of the reduced grid: ``size / factor`` rounded, at least 1."""
    if factor < 1:
        raise ConfigError(f"a subspace factor must be >= 1, got {factor}")
    return max(1, round(size / factor))


class GaussianProbes(FullSpace):
    """HSJA, L2: i.i.d. N(0, 1) in the full input space."""

    def draw(self, n: int, x_t: torch.Tensor, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return torch.randn((n, *x_t.shape[1:]), generator=generator, device=x_t.device)


class UniformProbes(FullSpace):
    """HSJA, Linf: i.i.d. U(-1, 1) in the full input space."""

    def draw(self, n: int, x_t: torch.Tensor, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return torch.rand((n, *x_t.shape[1:]), generator=generator, device=x_t.device) * 2 - 1


class ResizeProbes(FullSpace):
    """QEBA-S: Gaussian noise on a (H/f, W/f) grid per channel, bilinearly up-sampled to (H, W).

    The authors use ``skimage.transform.resize`` (order 1, reflect mode); ``F.interpolate`` bilinear with
    ``align_corners=False`` samples the same grid positions and differs only at the borders.
    """

    def __init__(self, factor: float = 4.0) -> None:
        self.factor = float(factor)

    def draw(self, n: int, x_t: torch.Tensor, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        c, h, w = x_t.shape[1:]
        size = (n, c, reduced_size(h, self.factor), reduced_size(w, self.factor))
        return torch.randn(size, generator=generator, device=x_t.device)

    def decode(self, z: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
        return F.interpolate(z, size=shape[1:], mode="bilinear", align_corners=False)


class DCTProbes(FullSpace):
    """QEBA-F: Gaussian coefficients in the low-frequency (H/f, W/f) DCT block per channel, inverse DCT.

    With ``orthogonalize`` the block is replaced by the Q factor of its QR decomposition, the quirk of the
    authors' ``DCTGenerator``; the default keeps i.i.d. Gaussian coefficients (the textbook subspace
    sampler; the span is the same).
    """

    def __init__(self, factor: float = 4.0, orthogonalize: bool = False) -> None:
        self.factor = float(factor)
        self.orthogonalize = bool(orthogonalize)
        self._bases: dict[tuple[int, int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    def _basis(self, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (h, w, device)
        if key not in self._bases:
            bh, bw = reduced_size(h, self.factor), reduced_size(w, self.factor)
            self._bases[key] = (dct_matrix(h, device)[:bh].T, dct_matrix(w, device)[:bw])
        return self._bases[key]

    def draw(self, n: int, x_t: torch.Tensor, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        c, h, w = x_t.shape[1:]
        size = (n, c, reduced_size(h, self.factor), reduced_size(w, self.factor))
        block = torch.randn(size, generator=generator, device=x_t.device)
        if self.orthogonalize:
            if block.shape[-2] != block.shape[-1]:
                raise ConfigError(f"DCT orthogonalize needs a square block, got {tuple(block.shape[-2:])}")
            block = torch.linalg.qr(block).Q
        return block

    def decode(self, z: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
        left, right = self._basis(shape[1], shape[2], z.device)
        return left @ z @ right


class PriorProbes(FullSpace):
    """QEBA-I and NonLinear-BA: directions drawn from a learned prior (:data:`.priors.base.Prior`)."""

    def __init__(self, prior: Prior) -> None:
        self.prior = prior

    def draw(self, n: int, x_t: torch.Tensor, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        with torch.no_grad():
            return self.prior.sample(n, generator).to(x_t.device, torch.float32)


class ProgressiveProbes(FullSpace):
    """PSBA: a progressive GAN's output at one scale, up-sampled to the input size.

    ``dct_factor`` > 1 keeps only the low-frequency (H/k, W/k) DCT block of the up-sampled output (the
    paper's frequency scale). ``orient`` flips each probe so that it points towards the original image
    (cosine with x_t - x0 <= 0), as in the authors' released code (on by default there; it biases the
    estimator, which the authors found helps GAN probes).
    """

    def __init__(self, prior: Prior, scale: int, dct_factor: float = 1.0, orient: bool = True) -> None:
        if not hasattr(prior, "sample_at"):
            raise ConfigError(f"PSBA needs a progressive prior (kind pgan), got {prior.kind!r}")
        self.prior = prior
        self.scale = int(scale)
        self.dct_factor = float(dct_factor)
        self.orient = bool(orient)

    def draw(self, n: int, x_t: torch.Tensor, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        h, w = x_t.shape[2:]
        with torch.no_grad():
            out = self.prior.sample_at(n, generator, self.scale).to(x_t.device, torch.float32)
        if out.shape[-2:] != (h, w):
            out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
        if self.dct_factor > 1:
            out = low_pass(out, (reduced_size(h, self.dct_factor), reduced_size(w, self.dct_factor)))
        if self.orient:
            towards = (x_t - x0).flatten(1)
            sign = torch.where((out.flatten(1) @ towards.T).squeeze(1) > 0, -1.0, 1.0)
            out = out * sign.view(-1, 1, 1, 1)
        return out


def auto_scale(sizes: list[int], input_side: int) -> int:
    """PSBA's scale when ``scale: auto``: the generator scale whose side is closest to input_side / 8.

    The paper picks the scale adaptively; the released code takes it as an argument, and in the authors'
    released CelebA logs the 28x28 scale (224 / 8) was best at every budget up to 5k queries. Returns a
    1-based scale index.
    """
    goal = input_side / 8
    return 1 + min(range(len(sizes)), key=lambda i: (abs(math.log(sizes[i] / goal)), i))

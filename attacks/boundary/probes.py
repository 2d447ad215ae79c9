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
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from advsuite.attacks.boundary.priors.base import Prior, qeba_subspace_fraction
from advsuite.dct import dct_matrix, low_pass
from advsuite.errors import ConfigError


@runtime_checkable
class MultiScale(Protocol):
    """A prior with an output per scale (:class:`advsuite.generative.pgan.ProgressiveGAN`)."""

    scale_sizes: list[tuple[int, int]]
    device: torch.device

    def sample_at(self, n: int, generator: torch.Generator, scale: int) -> torch.Tensor: ...


class ProbeGenerator(Protocol):
    def draw_for(
        self, image: int, n: int, x_t: torch.Tensor, x0: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor: ...

    def decode(self, z: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor: ...

    def adapt(self, images: torch.Tensor, dist: torch.Tensor) -> None: ...


class FullSpace(abc.ABC):
    """Base for generators whose codes already are the directions (subclasses may override ``decode``)."""

    @abc.abstractmethod
    def draw(self, n: int, x_t: torch.Tensor, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``n`` codes for one image, drawn from ``generator``."""

    def decode(self, z: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
        return z

    def draw_for(
        self, image: int, n: int, x_t: torch.Tensor, x0: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """:meth:`draw` for image number ``image`` of the batch (a schedule may treat images differently)."""
        return self.draw(n, x_t, x0, generator)

    def adapt(self, images: torch.Tensor, dist: torch.Tensor) -> None:  # noqa: B027 - optional hook
        """Told each iterated image's distance after an iteration; fixed generators ignore it."""

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

    ``scale`` None searches the scale per image (:class:`ScaleSearch`); an integer fixes it.
    ``dct_factor`` > 1 keeps only the low-frequency (H/k, W/k) DCT block of the up-sampled output (the
    paper's frequency scale). ``orient`` flips each probe so that it points towards the original image
    (cosine with x_t - x0 <= 0), as in the authors' released code (on by default there; it biases the
    estimator, which the authors found helps GAN probes).
    """

    def __init__(
        self,
        prior: Prior,
        scale: int | None,
        dct_factor: float = 1.0,
        orient: bool = True,
        search: ScaleSearch | None = None,
    ) -> None:
        if not isinstance(prior, MultiScale):
            raise ConfigError(f"PSBA needs a progressive prior (kind pgan), got {prior.kind!r}")
        self.prior = prior
        self.search = search or ScaleSearch(len(prior.scale_sizes), fixed=scale)
        self.dct_factor = float(dct_factor)
        self.orient = bool(orient)

    def draw(self, n: int, x_t: torch.Tensor, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.draw_for(-1, n, x_t, x0, generator)

    def adapt(self, images: torch.Tensor, dist: torch.Tensor) -> None:
        self.search.adapt(images, dist)

    def draw_for(
        self, image: int, n: int, x_t: torch.Tensor, x0: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        h, w = x_t.shape[2:]
        with torch.no_grad():
            out = self.prior.sample_at(n, generator, self.search.scale(image)).to(x_t.device, torch.float32)
        if out.shape[-2:] != (h, w):
            out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
        if self.dct_factor > 1:
            out = low_pass(out, (reduced_size(h, self.dct_factor), reduced_size(w, self.dct_factor)))
        if self.orient:
            towards = (x_t - x0).flatten(1)
            sign = torch.where((out.flatten(1) @ towards.T).squeeze(1) > 0, -1.0, 1.0)
            out = out * sign.view(-1, 1, 1, 1)
        return out


class SpectrumProbes(FullSpace):
    """PSBA's spectrum scale: Gaussian combinations of the top ``k`` principal components of the progressive
    GAN's outputs (the authors' ``--topk``, e.g. ``PGAN224p400``: PCA of 40,000 samples). Any prior works:
    for NonLinear-BA's decoders (``scale`` None) it decorrelates their outputs the same way (our extension).

    The components come from ``samples`` outputs at ``scale`` (None: the prior's ``sample``), up-sampled to
    the input size, drawn with a fixed seed before the attack, so they cost no queries. A randomized SVD
    keeps this cheap at 224 px.
    """

    def __init__(self, prior: Prior, k: int, scale: int | None, shape: tuple[int, ...], samples: int = 4000) -> None:
        if scale is not None and not isinstance(prior, MultiScale):
            raise ConfigError(f"a spectrum scale {scale} needs a progressive prior (kind pgan), got {prior.kind!r}")
        if k > samples:
            raise ConfigError(f"spectrum={k} components need at least as many samples, got {samples}")
        generator = torch.Generator(prior.device).manual_seed(0)
        with torch.no_grad():
            drawn = prior.sample(samples, generator) if scale is None else prior.sample_at(samples, generator, scale)
            out = drawn.float()
            out = F.interpolate(out, size=tuple(shape[-2:]), mode="bilinear", align_corners=False).flatten(1)
            out = out - out.mean(dim=0, keepdim=True)
            _, singular, v = torch.svd_lowrank(out.cpu(), q=min(k + 10, *out.shape), niter=4)
        self.basis = v[:, :k].T.contiguous()  # (k, d), rows unit-norm and orthogonal
        self.singular = singular[:k]

    def draw(self, n: int, x_t: torch.Tensor, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        basis = self.basis.to(x_t.device)
        coefficients = torch.randn((n, len(basis)), generator=generator, device=x_t.device)
        return (coefficients @ basis).view(n, *x_t.shape[1:])


class ScaleSearch:
    """PSBA's progressive scale search, per image, on the attack's own queries (all counted).

    The paper searches the scale "progressively ... in a self-adaptive way"; the released code takes it as
    an argument. Our rule: every image starts at scale 1; after ``patience`` iterations at a scale its
    progress rate (mean relative distance decrease per iteration) is compared with the previous scale's;
    while the rate improves the image moves one scale up, and the first scale that does worse sends it back
    to the one before, where it stays (the last scale, if every step improved). Rates fall as an attack
    converges, so the comparison leans towards the lower scale: a scale must win despite coming later.
    ``fixed`` pins every image to one scale instead.
    """

    def __init__(self, n_scales: int, fixed: int | None = None, patience: int = 3) -> None:
        self.n_scales, self.fixed, self.patience = int(n_scales), fixed, int(patience)
        self._scale: dict[int, int] = {}
        self._settled: set[int] = set()
        self._history: dict[int, list[float]] = {}
        self._rate: dict[int, dict[int, float]] = {}

    def scale(self, image: int) -> int:
        return self.fixed if self.fixed is not None else self._scale.get(image, 1)

    def adapt(self, images: torch.Tensor, dist: torch.Tensor) -> None:
        if self.fixed is not None:
            return
        for i, d in zip(images.tolist(), dist.tolist(), strict=True):
            if i in self._settled:
                continue
            history = self._history.setdefault(i, [])
            history.append(d)
            if len(history) <= self.patience:
                continue
            s, rates = self.scale(i), self._rate.setdefault(i, {})
            rates[s] = 1 - (history[-1] / max(history[0], 1e-30)) ** (1 / self.patience)
            if s > 1 and rates[s] <= rates[s - 1]:
                self._scale[i] = s - 1
                self._settled.add(i)
            elif s == self.n_scales:
                self._settled.add(i)
            else:
                self._scale[i] = s + 1
            history[:] = [d]

    def chosen(self) -> dict[int, int]:
        """The scale each image settled on (or is trying)."""
        return dict(self._scale)


def auto_scale(sizes: list[int], input_side: int) -> int:
    """PSBA's scale when ``scale: auto``: the generator scale whose side is closest to input_side / 8.

    The paper picks the scale adaptively; the released code takes it as an argument, and in the authors'
    released CelebA logs the 28x28 scale (224 / 8) was best at every budget up to 5k queries. Returns a
    1-based scale index.
    """
    goal = input_side / 8
    return 1 + min(range(len(sizes)), key=lambda i: (abs(math.log(sizes[i] / goal)), i))


class Widening(FullSpace):
    """A projected generator that widens to the full space where an image's progress stalls.

    A projection attack's steps live in its subspace (or its prior's range); the part of the start-to-image
    difference outside it shrinks only through the binary searches, so the distance levels off (measured
    in docs/benchmarks.md). The rule: after every iteration compare each image's distance with its
    distance ``patience`` iterations before; when it fell by less than ``tolerance`` (relative), ``step``
    more of that image's probes come from the full space (Gaussian, as HSJA's), up to all of them. Images
    that keep descending keep their subspace.
    """

    def __init__(self, inner: FullSpace, patience: int = 2, tolerance: float = 0.02, step: float = 0.5) -> None:
        self.inner, self.full = inner, GaussianProbes()
        self.patience, self.tolerance, self.step = int(patience), float(tolerance), float(step)
        self.share: dict[int, float] = {}
        self._history: dict[int, list[float]] = {}

    def draw(self, n: int, x_t: torch.Tensor, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.draw_for(-1, n, x_t, x0, generator)

    def draw_for(
        self, image: int, n: int, x_t: torch.Tensor, x0: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        c, h, w = x_t.shape[1:]
        k = min(n, round(self.share.get(image, 0.0) * n))  # full-space probes of this image
        parts = [self.inner.decode(self.inner.draw_for(image, n - k, x_t, x0, generator), (c, h, w))] if k < n else []
        if k:
            parts.append(self.full.draw(k, x_t, x0, generator))
        return torch.cat(parts)

    def adapt(self, images: torch.Tensor, dist: torch.Tensor) -> None:
        self.inner.adapt(images, dist)
        for i, d in zip(images.tolist(), dist.tolist(), strict=True):
            history = self._history.setdefault(i, [])
            history.append(d)
            if len(history) > self.patience and d > (1 - self.tolerance) * history[-1 - self.patience]:
                self.share[i] = min(1.0, self.share.get(i, 0.0) + self.step)
                history[:] = [d]  # judge the wider mix on its own iterations

"""Patches against embedding (face-verification style) models: dodging and impersonation.

The losses of Xiao, Gao, Fu, Dong, Gao, Zhang, Zhou, Zhu, "Improving Transferability of Adversarial Patches
on Face Recognition with Generative Models", CVPR 2021 (arXiv 2106.15058), with the EOT patch optimisation
of Brown et al. 2017 (see :mod:`.adversarial_patch`). A verification model maps an image to an embedding;
two images match when the cosine similarity of their embeddings reaches a threshold τ.

- ``mode: dodging``: the patched image should no longer match its own identity: minimise
  cos(f(A(p, x)), e_src); success when the similarity falls below τ.
- ``mode: impersonation``: the patched image should match a target identity: maximise
  cos(f(A(p, x)), e_tgt); success when the similarity reaches τ.

``ref`` holds one reference (enrolment) embedding per image: its own identity's template for dodging, the
target's for impersonation. Fitting over many images gives a universal patch; over one image, the per-pair
patch of the paper. τ is ``threshold`` or is derived from genuine/impostor pairs at a false-accept rate
``far`` (:func:`verification_threshold`; the paper fixes τ at a low FAR, e.g. 1e-3 on LFW).

Where this differs from the paper: the paper's patch is G(w) of a face generator pasted on a facial region
(eyes, nose, ...) and optimised with MI-FGSM over surrogate models; here the patch lives in pixel space, is
optimised with Adam under EOT (random location, scale and rotation), and attacks the given model white-box.
The transfer/manifold part is :class:`~advsuite.attacks.patch.TransferPatch`.

Queries: fitting costs one forward+backward pass per image per step (``fit_queries``); attacking costs one
forward pass per image (the similarity check).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from advsuite.errors import ConfigError, InputError
from advsuite.seeding import make_generator
from advsuite.validation import check_choice, check_flags, check_images, check_int, check_number

from .base import EVAL_STREAM, as_range
from .placement import SHAPES, paste, patch_mask, patch_side, random_positions, random_transforms, warp

MODES = ("dodging", "impersonation")


@torch.no_grad()
def embed(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Embeddings of ``x`` in eval mode, chunked, on the CPU."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)


def verification_threshold(
    model: nn.Module, x: torch.Tensor, identities: torch.Tensor, far: float, batch_size: int = 256
) -> tuple[float, dict[str, float]]:
    """The cosine-similarity threshold τ at which at most a fraction ``far`` of impostor pairs match.

    All pairs of ``x`` are scored; pairs of the same identity are genuine, the others impostors. Returns
    ``(τ, stats)`` with the achieved ``far``, the true-accept rate ``tar`` on genuine pairs, and pair counts.
    """
    from advsuite.attacks.face.verification import threshold_at_far

    return threshold_at_far(F.normalize(embed(model, x, batch_size), dim=1), identities, far)


@dataclass
class EmbeddingPatchResult:
    """Per image: the patched image, its similarity to the reference, success at ``threshold``."""

    x_adv: torch.Tensor
    similarity: torch.Tensor
    clean_similarity: torch.Tensor
    success: torch.Tensor
    threshold: float
    queries: torch.Tensor
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class EmbeddingPatch:
    """A universal (or per-image) patch against an embedding model: ``dodging`` or ``impersonation``."""

    mode: str = "dodging"
    #: patch area as a fraction of the image area
    size: float = 0.1
    shape: str = "square"
    steps: int = 300
    lr: float = 0.05
    batch_size: int = 64
    scale: Sequence[float] = (0.8, 1.2)
    rotation: Sequence[float] = (-22.5, 22.5)
    #: cosine-similarity threshold; null: set it with :meth:`calibrate` (at ``far``)
    threshold: float | None = None
    far: float = 1e-3
    eval_transforms: bool = False
    seed: int = 0

    patch: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)
    fit_queries: int = field(default=0, init=False, compare=False)
    history: list[float] = field(default_factory=list, init=False, repr=False, compare=False)
    fit_seconds: float = field(default=0.0, init=False, compare=False)

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_choice(owner, "mode", self.mode, MODES)
        check_choice(owner, "shape", self.shape, SHAPES)
        check_number(owner, "size", self.size)
        if self.size > 1:
            raise ConfigError(f"{owner}: size is a fraction of the image area in (0, 1], got {self.size!r}")
        check_int(owner, "steps", self.steps, 1)
        check_int(owner, "batch_size", self.batch_size, 1)
        check_number(owner, "lr", self.lr)
        check_number(owner, "far", self.far, strict=False)
        if self.threshold is not None and not (isinstance(self.threshold, int | float) and -1 <= self.threshold <= 1):
            raise ConfigError(f"{owner}: threshold is a cosine similarity in [-1, 1], got {self.threshold!r}")
        self.scale = as_range(owner, "scale", self.scale, 1e-3, 1e3)
        self.rotation = as_range(owner, "rotation", self.rotation, -180.0, 180.0)
        check_flags(owner, self, "eval_transforms")

    def calibrate(self, model: nn.Module, x: torch.Tensor, identities: torch.Tensor) -> dict[str, float]:
        """Set ``threshold`` from genuine/impostor pairs of ``x`` at ``far``; returns the pair statistics."""
        self.threshold, stats = verification_threshold(model, x, identities, self.far, self.batch_size)
        return stats

    def loss(self, emb: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """Per-image value minimised: cos(emb, ref) for dodging, −cos for impersonation."""
        cos = F.cosine_similarity(emb, ref, dim=1)
        return cos if self.mode == "dodging" else -cos

    def fit(self, model: nn.Module, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """Fit the patch on images ``x`` with reference embeddings ``ref`` (N, D); returns (C, s, s) in [0, 1]."""
        check_images(x, name="x")
        if ref.dim() != 2 or len(ref) != len(x):
            raise InputError(f"ref needs one embedding per image, shape ({len(x)}, D), got {tuple(ref.shape)}")
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        _, c, height, width = x.shape
        side = patch_side(self.size, height, width)
        mask = patch_mask(self.shape, side, device)
        patch = torch.rand(c, side, side, generator=make_generator(self.seed)).to(device).requires_grad_(True)
        opt = torch.optim.Adam([patch], lr=self.lr)
        pick, gen = make_generator(self.seed), make_generator(self.seed, device)
        self.history, start, queries = [], time.perf_counter(), 0
        was_training = model.training
        model.eval()
        try:
            with torch.enable_grad():
                for _ in range(self.steps):
                    batch = torch.randint(len(x), (min(self.batch_size, len(x)),), generator=pick)
                    xb, rb = x[batch].to(device), ref[batch].to(device)
                    s, angle, centre = random_transforms(
                        len(xb), side, height, width, gen, scale=self.scale, rotation=self.rotation
                    )
                    value = self.loss(model(warp(xb, patch, mask, s, angle, centre)[0]), rb).mean()
                    opt.zero_grad(set_to_none=True)
                    value.backward()
                    opt.step()
                    with torch.no_grad():
                        patch.clamp_(0, 1)
                    queries += len(xb)
                    self.history.append(float(value.detach()))
        finally:
            model.train(was_training)
        self.fit_queries += queries
        self.patch = patch.detach()
        self.fit_seconds = time.perf_counter() - start
        return self.patch

    def apply(self, x: torch.Tensor, patch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The patch on every image at a seeded random position (and scale/rotation with ``eval_transforms``)."""
        n, _, height, width = x.shape
        side = patch.shape[-1]
        mask = patch_mask(self.shape, side, x.device)
        if self.eval_transforms:
            s, angle, centre = random_transforms(n, side, height, width, gen, scale=self.scale, rotation=self.rotation)
            return warp(x, patch, mask, s, angle, centre, exact=True)[0]
        return paste(x, patch, mask, *random_positions(n, side, height, width, gen))[0]

    def __call__(
        self, model: nn.Module, x: torch.Tensor, ref: torch.Tensor, *, threshold: float | None = None
    ) -> EmbeddingPatchResult:
        """Paste the fitted patch on ``x`` and judge each image against its reference embedding at τ."""
        if self.patch is None:
            raise ConfigError(f"{type(self).__name__}: fit the patch first (attack.fit(model, x_train, ref))")
        tau = self.threshold if threshold is None else threshold
        if tau is None:
            raise ConfigError(
                f"{type(self).__name__}: no threshold; pass threshold=, set it in the config, or call "
                "attack.calibrate(model, x, identities) to derive it at the configured far"
            )
        check_images(x, name="x")
        device = self.patch.device
        x_adv = self.apply(x.to(device), self.patch, make_generator(self.seed + EVAL_STREAM, device))
        ref = ref.cpu().float()
        sim = F.cosine_similarity(embed(model, x_adv), ref, dim=1)
        clean = F.cosine_similarity(embed(model, x), ref, dim=1)
        success = sim < tau if self.mode == "dodging" else sim >= tau
        return EmbeddingPatchResult(
            x_adv=x_adv.cpu(),
            similarity=sim,
            clean_similarity=clean,
            success=success,
            threshold=float(tau),
            queries=torch.ones(len(x), dtype=torch.long),
            extras={"fit_queries": self.fit_queries, "mode": self.mode},
        )

"""Reversible adversarial examples from a local visible patch (``attack=reversible_patch``).

Chen, Zhu, Yin, "Reversible Attack based on Local Visible Adversarial Perturbation", arXiv 2110.02700.

For each image ``x`` (quantised to uint8: the original that :func:`.codec.restore` gives back is
``round(255 · x)``):

1. paste a universal adversarial patch (Brown et al. 2017 / LaVAN, fitted once by
   :class:`advsuite.attacks.patch.AdversarialPatch` and quantised to uint8) at a position;
2. compress the original pixels under the patch, its position and size and a digest (:mod:`.payload`);
3. hide that payload by prediction-error expansion in the pixels outside the patch, blue channel first,
   then red, then green (:mod:`.rdh`, :mod:`.codec`);
4. return the marked image (the reversible adversarial example, RAE) as ``x_adv``.

An image whose payload does not fit keeps the plain patched image as ``x_adv`` and is flagged
(``extras["reversible"]`` False, metric ``n_not_fitting``); it is never returned half-embedded.

Positions: ``location: random`` draws ``(top, left)`` per image from a generator seeded with ``seed`` and a
hash of the image, so an image gets the same position whatever batch it is attacked in (and
:meth:`extra_metrics` can rebuild everything); the corners and ``center`` are fixed positions.

Defaults and where they differ from the paper:

- the patch is Brown et al.'s EOT patch (the suite's ``attack=patch``), reused rather than re-implemented;
  the paper crafts its own local visible perturbation.
- ``size`` 0.05 of the image area (7 × 7 on CIFAR-10, 6 × 6 on MNIST): a small local patch that leaves
  room for its payload around it (one-layer PEE carries at most one bit per pixel and channel).
- RDH is PEE with a rhombus predictor and histogram shifting (:mod:`.rdh`); the paper names RDH and
  lossless compression without fixing the scheme. A few dozen header bits go by LSB replacement into a
  band of blue pixels (their original LSBs travel in the payload), so that the decoder needs no key.
- ``max_threshold`` 63 lets a channel take up to one bit per pixel before the next channel is used; lower
  it to bound the distortion (more images then do not fit).

Queries: fitting the patch costs one forward+backward pass per training image per epoch
(``extras["fit_queries"]``, metric ``patch_fit_queries``; spent once for all images). Per image the
attack makes two forward passes, on the plain patched image and on the RAE: ``queries`` is 2.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from advsuite.attack import Access, Attack, AttackResult, PrepareContext
from advsuite.errors import ConfigError
from advsuite.models.classifier import Classifier
from advsuite.oracles import is_adversarial
from advsuite.seeding import make_generator
from advsuite.validation import check_choice, check_flags, check_int

from ..patch import AdversarialPatch
from .codec import Hidden, Rect, hide, restore
from .payload import CODECS, RestoreError
from .rdh import MAX_THRESHOLD

LOCATIONS = ("random", "top_left", "top_right", "bottom_left", "bottom_right", "center")


def quantise(x: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] as uint8 (``round(255 · x)``), on the CPU."""
    return (x.detach().cpu() * 255).round().clamp(0, 255).to(torch.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 images (inf when equal)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


@dataclass(frozen=True)
class _Record:
    """One image's outcome, kept for :meth:`ReversiblePatch.extra_metrics` (the images themselves are not)."""

    rect: Rect
    fits: bool
    payload_bits: int
    capacity_bits: int


@dataclass
class ReversiblePatch(Attack):
    """Chen et al.'s reversible attack: a visible patch plus B-R-G reversible data hiding; white-box."""

    access: ClassVar[Access] = "whitebox"
    leaderboard_metrics: ClassVar[Mapping[str, str]] = {
        "restored_exact": "bit-exact restores",
        "patch_success": "patch success",
    }

    #: patch area as a fraction of the image area (one size)
    size: float = 0.05
    shape: str = "square"
    location: str = "random"
    #: the patch fit (:class:`advsuite.attacks.patch.AdversarialPatch`)
    epochs: int = 5
    lr: float = 0.05
    batch_size: int = 64
    n_train: int = 2000
    scale: Sequence[float] = (0.8, 1.2)
    rotation: Sequence[float] = (-22.5, 22.5)
    targeted: bool = False
    target_class: int | None = None
    #: largest PEE threshold per channel (1..63)
    max_threshold: int = MAX_THRESHOLD
    #: payload compression: auto (smallest), zlib, lzma or none
    codec: str = "auto"
    seed: int = 0

    _patcher: AdversarialPatch = field(init=False, repr=False, compare=False)
    _records: dict[tuple[int, bytes], _Record] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if not (isinstance(self.size, int | float) and not isinstance(self.size, bool) and 0 < self.size < 1):
            raise ConfigError(f"{owner}: size must be one fraction of the image area in (0, 1), got {self.size!r}")
        check_choice(owner, "location", self.location, LOCATIONS)
        check_choice(owner, "codec", self.codec, ["auto", *CODECS])
        check_int(owner, "max_threshold", self.max_threshold, 1)
        check_int(owner, "seed", self.seed, 0)
        if self.max_threshold > MAX_THRESHOLD:
            raise ConfigError(f"{owner}: max_threshold must be at most {MAX_THRESHOLD}, got {self.max_threshold}")
        check_flags(owner, self, "targeted")
        try:
            self._patcher = AdversarialPatch(
                size=float(self.size),
                shape=self.shape,
                epochs=self.epochs,
                lr=self.lr,
                batch_size=self.batch_size,
                n_train=self.n_train,
                scale=self.scale,
                rotation=self.rotation,
                targeted=self.targeted,
                target_class=self.target_class,
                seed=self.seed,
            )
        except ConfigError as err:
            raise ConfigError(f"{owner} (its patch): {err}") from None

    # ------------------------------------------------------------------------------------- patch

    def prepare(self, context: PrepareContext) -> None:
        """Keep the run's dataset: the patch is fitted on its training split at the first :meth:`run`."""
        self._patcher.prepare(context)

    def fit(self, model: Classifier, x_train: torch.Tensor, y_train: torch.Tensor) -> torch.Tensor:
        """Fit the (untargeted or ``target_class``) patch now; returns it, (C, s, s) in [0, 1]."""
        return self._patcher.fit(model, x_train, y_train)

    @property
    def fit_queries(self) -> int:
        return self._patcher.fit_queries

    def side(self, input_shape: Sequence[int]) -> int:
        return self._patcher.side(float(self.size), input_shape)

    def positions(self, images: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image ``(top, left)`` of the patch for uint8 images (N, C, H, W)."""
        n, _, h, w = images.shape
        top_max, left_max = h - side, w - side
        if self.location != "random":
            top = {"top": 0, "bottom": top_max, "center": top_max // 2}[self.location.split("_")[0]]
            left = {"left": 0, "right": left_max, "center": left_max // 2}[self.location.split("_")[-1]]
            return torch.full((n,), top), torch.full((n,), left)
        tops, lefts = [], []
        for img in images:  # one generator per image: the same position whatever batch the image is in
            key = hashlib.blake2b(img.numpy().tobytes(), digest_size=8, key=str(self.seed).encode()).digest()
            gen = make_generator(int.from_bytes(key, "big") >> 1)  # a 63-bit seed from (seed, image)
            tops.append(int(torch.randint(0, top_max + 1, (1,), generator=gen)))
            lefts.append(int(torch.randint(0, left_max + 1, (1,), generator=gen)))
        return torch.tensor(tops), torch.tensor(lefts)

    # ------------------------------------------------------------------------------------- attack

    def make(
        self, model: Classifier, x: torch.Tensor, goal: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, list[Hidden]]:
        """uint8 ``(plain patched, reversible-or-plain)`` images (N, C, H, W) on the CPU, and the embedding outcomes."""
        original = quantise(x)
        side = self.side(model.input_shape)
        top, left = self.positions(original, side)
        patches = quantise(self._patcher.patches_for(model, float(self.size), goal, len(x))).float() / 255
        plain, _ = self._patcher.place(original.float() / 255, patches.cpu(), top, left)
        plain_u8 = quantise(plain)
        out = plain_u8.clone()
        outcomes = []
        for i in range(len(x)):
            rect = Rect(int(top[i]), int(left[i]), side, side)
            hidden = hide(
                original[i].numpy(), plain_u8[i].numpy(), rect, max_threshold=self.max_threshold, codec=self.codec
            )
            if hidden.image is not None:
                out[i] = torch.from_numpy(hidden.image)
            outcomes.append(hidden)
            key = (id(model), original[i].numpy().tobytes())
            self._records[key] = _Record(rect, hidden.fits, hidden.payload_bits, hidden.capacity_bits)
        return plain_u8, out, outcomes

    def run(
        self,
        target: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        targets: torch.Tensor | None,
        starting_points: torch.Tensor | None,
    ) -> AttackResult:
        goal, _ = self._patcher.goal(y, targets)
        plain, rae, outcomes = self.make(target, x, goal)
        with torch.no_grad():
            plain_labels = target((plain.float() / 255).to(x.device)).argmax(1)
            x_adv = (rae.float() / 255).to(x.device)
            labels = target(x_adv).argmax(1)
        return AttackResult(
            x=x,
            x_adv=x_adv,
            success=is_adversarial(labels, y, targets),
            queries=torch.full((len(x),), 2, dtype=torch.long, device=x.device),
            extras={
                "reversible": [h.fits for h in outcomes],
                "not_fitting_reason": [h.reason for h in outcomes],
                "plain_success": is_adversarial(plain_labels, y, targets).tolist(),
                "payload_bits": [h.payload_bits for h in outcomes],
                "capacity_bits": [h.capacity_bits for h in outcomes],
                "thresholds_brg": [list(h.thresholds) for h in outcomes],
                "patch_side": self.side(target.input_shape),
                "fit_queries": self.fit_queries,
            },
        )

    # ------------------------------------------------------------------------------------- metrics

    def extra_metrics(
        self,
        model: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        x_adv: torch.Tensor,
        attacked: torch.Tensor,
        *,
        targets: torch.Tensor | None,
        batch_size: int,
    ) -> dict[str, float | None]:
        """Measured afresh on the attacked images (rebuilt from the image when it was not attacked here):

        ``restored_exact`` (fraction of the RAEs whose :func:`restore` is bit-exact), ``patch_success``
        (RAEs fooling the model: prediction changed, or the goal class with ``target_class``/targets),
        ``plain_patch_success`` (the plain patched images, all attacked) and
        ``plain_patch_success_reversible`` (the same images as ``patch_success``), ``n_reversible``,
        ``n_not_fitting``, ``psnr_mean`` and ``plain_psnr_mean`` (dB vs the original, over the RAEs),
        ``payload_bits_mean``, ``capacity_bits_mean`` and ``patch_fit_queries``.
        """
        goal, eligible = self._patcher.goal(y, targets)
        idx = attacked.nonzero().squeeze(1)
        originals = quantise(x[idx])
        records = [self._records.get((id(model), o.numpy().tobytes())) for o in originals]
        missing = [k for k, r in enumerate(records) if r is None]
        if missing:
            sub = idx[missing]
            self.make(model, x[sub].to(model.device), None if goal is None else goal[sub].to(model.device))
            records = [self._records[(id(model), o.numpy().tobytes())] for o in originals]
        advs = quantise(x_adv[idx])
        reversible = torch.tensor([r.fits for r in records if r is not None], dtype=torch.bool)
        exact, plain = [], originals.clone()
        for k, r in enumerate(records):
            assert r is not None
            rows, cols = slice(r.rect.top, r.rect.top + r.rect.height), slice(r.rect.left, r.rect.left + r.rect.width)
            plain[k][:, rows, cols] = advs[k][:, rows, cols]  # x_adv shows the patch exactly as pasted
            if r.fits:
                try:
                    exact.append(bool(np.array_equal(restore(advs[k].numpy()), originals[k].numpy())))
                except RestoreError:
                    exact.append(False)

        def hits(images: torch.Tensor, keep: torch.Tensor) -> float | None:
            sel = keep & eligible[idx]
            if not sel.any():
                return None
            pred = model.predict(images[sel].float() / 255, batch_size)
            g = None if goal is None else goal[idx][sel]
            hit = pred == g if g is not None else pred != y[idx][sel]
            return float(hit.float().mean())

        every = torch.ones(len(idx), dtype=torch.bool)
        rev = [k for k in range(len(idx)) if reversible[k]]
        psnrs = [psnr(advs[k].numpy(), originals[k].numpy()) for k in rev]
        plain_psnrs = [psnr(plain[k].numpy(), originals[k].numpy()) for k in rev]
        return {
            "restored_exact": float(np.mean(exact)) if exact else None,
            "patch_success": hits(advs, reversible),
            "plain_patch_success": hits(plain, every),
            "plain_patch_success_reversible": hits(plain, reversible),
            "n_reversible": float(len(rev)),
            "n_not_fitting": float(len(idx) - len(rev)),
            "psnr_mean": _finite_mean(psnrs),
            "plain_psnr_mean": _finite_mean(plain_psnrs),
            "payload_bits_mean": _finite_mean([r.payload_bits for r in records if r is not None]),
            "capacity_bits_mean": _finite_mean([r.capacity_bits for r in records if r is not None]),
            "patch_fit_queries": float(self.fit_queries),
        }


def _finite_mean(values: Sequence[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else None

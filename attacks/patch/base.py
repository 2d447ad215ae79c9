"""What every universal-patch attack shares: hyper-parameters, goals, placement at evaluation, metrics.

A subclass says how a patch is fitted (:meth:`UniversalPatchAttack._patch`) and how the attacked model is
asked for labels (:meth:`UniversalPatchAttack._labels`); this base fits lazily, pastes the fitted patch at
seeded random positions, and reports ``patch_success`` and the success-vs-size curve.

Goals: untargeted (``targeted: false``, ``target_class: null``) pushes every image away from its label;
``target_class: k`` fits one patch towards class ``k`` (Brown et al.'s setting); ``targeted: true`` takes
per-sample targets from the caller (``task=evaluate`` draws them) and fits one patch per target class.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from advsuite.attack import Access, Attack, AttackResult
from advsuite.data import sample_tensors
from advsuite.errors import ConfigError
from advsuite.models.classifier import Classifier
from advsuite.oracles import is_adversarial
from advsuite.seeding import make_generator
from advsuite.validation import check_flags, check_int

from .placement import SHAPES, paste, patch_mask, patch_side, random_positions, random_transforms, warp

#: the run's patch positions come from ``seed + EVAL_STREAM`` (fitting uses ``seed``), the curve's from one more
EVAL_STREAM = 1


def as_sizes(owner: str, size: Any) -> list[float]:
    """``size`` (a number or a list) as a sorted list of distinct fractions of the image area in (0, 1]."""
    values = [size] if isinstance(size, int | float) and not isinstance(size, bool) else size
    try:
        out = sorted({float(v) for v in values})
    except (TypeError, ValueError):
        raise ConfigError(f"{owner}: size must be a number or a list of numbers, got {size!r}") from None
    if not out or any(not (0 < v <= 1) for v in out):
        raise ConfigError(f"{owner}: size is a fraction of the image area in (0, 1] (or a list of them), got {size!r}")
    return out


def as_range(owner: str, name: str, value: Any, low: float, high: float) -> tuple[float, float]:
    """``value`` as an ordered pair ``(lo, hi)`` with ``low <= lo <= hi <= high``."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{owner}: {name} must be a pair [low, high], got {value!r}") from None
    if not (low <= lo <= hi <= high) or not (math.isfinite(lo) and math.isfinite(hi)):
        raise ConfigError(f"{owner}: {name} must be [low, high] with {low} <= low <= high <= {high}, got {value!r}")
    return lo, hi


def training_images(data: Any, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random subset of ``n`` training images of a DataBundle (splits may be sorted by class)."""
    return sample_tensors(data.train, n, seed)


def objective(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Per-sample value a patch maximises: CE of the label (untargeted) or −CE of the target."""
    ce = F.cross_entropy(logits, labels, reduction="none")
    return -ce if targeted else ce


@dataclass
class UniversalPatchAttack(Attack):
    """Base of the universal patch attacks (see the module docstring); not instantiated directly."""

    access: ClassVar[Access] = "whitebox"
    leaderboard_metrics: ClassVar[Mapping[str, str]] = {"patch_success": "patch success"}

    #: patch area as a fraction of the image area; a list fits one patch per size (the success-vs-size curve)
    size: float | list[float] = 0.1
    shape: str = "square"
    #: images per optimisation step
    batch_size: int = 64
    #: training images the patch is fitted on (a seeded random subset of the training split)
    n_train: int = 2000
    #: EOT: the patch side is multiplied by a factor uniform in this range
    scale: Sequence[float] = (0.8, 1.2)
    #: EOT: rotation in degrees, uniform in this range
    rotation: Sequence[float] = (-22.5, 22.5)
    #: at evaluation also draw a random scale and rotation (otherwise: random position only)
    eval_transforms: bool = False
    targeted: bool = False
    #: a fixed target class (with ``targeted: false``); null: untargeted, or per-sample targets
    target_class: int | None = None
    seed: int = 0

    _cache: dict[Any, torch.Tensor] = field(default_factory=dict, init=False, repr=False, compare=False)
    #: per fitted patch: queries, loss trace, seconds (``(side, class)`` -> dict)
    fit_log: dict[Any, dict[str, Any]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        owner = type(self).__name__
        sizes = as_sizes(owner, self.size)
        self.size = sizes[0] if isinstance(self.size, int | float) else sizes
        if self.shape not in SHAPES:
            raise ConfigError(f"{owner}: shape must be one of {list(SHAPES)}, got {self.shape!r}")
        check_int(owner, "batch_size", self.batch_size, 1)
        check_int(owner, "n_train", self.n_train, 1)
        check_int(owner, "seed", self.seed, 0)
        self.scale = as_range(owner, "scale", self.scale, 1e-3, 1e3)
        self.rotation = as_range(owner, "rotation", self.rotation, -180.0, 180.0)
        check_flags(owner, self, "eval_transforms", "targeted")
        if self.target_class is not None:
            check_int(owner, "target_class", self.target_class, 0)
            if self.targeted:
                raise ConfigError(
                    f"{owner}: target_class fixes one target for every image, targeted=true asks the caller for "
                    "per-sample targets; set target_class=null, or targeted=false with target_class "
                    "(patch_success then counts hits on target_class)"
                )

    # ------------------------------------------------------------------------------------- pieces

    @property
    def sizes(self) -> list[float]:
        return as_sizes(type(self).__name__, self.size)

    def side(self, size: float, input_shape: Sequence[int]) -> int:
        return patch_side(size, int(input_shape[-2]), int(input_shape[-1]))

    def mask(self, side: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The boolean (side, side) mask of this attack's patch shape."""
        return patch_mask(self.shape, side, device)

    def place(
        self, x: torch.Tensor, patch: torch.Tensor, top: torch.Tensor, left: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Paste a fitted (C, s, s) patch (or one per image) at integer per-image ``(top, left)``:
        ``(x_patched, where)`` as :func:`advsuite.attacks.patch.paste`."""
        return paste(x, patch, self.mask(patch.shape[-1], x.device), top, left)

    def apply(self, x: torch.Tensor, patch: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, Any]]:
        """Put the patch on every image at a random position drawn from ``gen`` (and a random scale and
        rotation when ``eval_transforms``); returns ``(x_adv, placement)``."""
        n, _, height, width = x.shape
        side = patch.shape[-1]
        if self.eval_transforms:
            s, angle, centre = random_transforms(n, side, height, width, gen, scale=self.scale, rotation=self.rotation)
            x_adv, _ = warp(x, patch, self.mask(side, x.device), s, angle, centre, exact=True)
            return x_adv, {"scale": s, "angle": angle, "centre": centre}
        top, left = random_positions(n, side, height, width, gen)
        x_adv, _ = self.place(x, patch, top, left)
        return x_adv, {"top": top, "left": left}

    def eot(self, x: torch.Tensor, patch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Differentiable placement under a fresh random position, scale and rotation per image (EOT)."""
        n, _, height, width = x.shape
        side = patch.shape[-1]
        s, angle, centre = random_transforms(n, side, height, width, gen, scale=self.scale, rotation=self.rotation)
        return warp(x, patch, self.mask(side, x.device), s, angle, centre)[0]

    def goal(self, y: torch.Tensor, targets: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``(goal classes or None when untargeted, eligible mask)``; with ``target_class`` images of that
        class are not eligible."""
        if targets is not None:
            return targets, torch.ones_like(y, dtype=torch.bool)
        if self.target_class is not None:
            return torch.full_like(y, self.target_class), y != self.target_class
        return None, torch.ones_like(y, dtype=torch.bool)

    def patches_for(self, model: Any, size: float, goal: torch.Tensor | None, n: int) -> torch.Tensor:
        """One patch per image, (n, C, s, s): the untargeted patch, or the patch of each image's goal class."""
        if goal is None:
            patch = self._patch(model, size, None)
            return patch.expand(n, *patch.shape)
        classes = goal.unique().tolist()
        patches = {c: self._patch(model, size, int(c)) for c in classes}
        first = patches[classes[0]]
        out = torch.empty(n, *first.shape, device=first.device, dtype=first.dtype)
        for c, patch in patches.items():
            out[goal.to(first.device) == c] = patch
        return out

    def _train_subset(self, x: torch.Tensor, y: torch.Tensor, target: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The training images a patch is fitted on: all, or (targeted) those not already of the target."""
        if target is None:
            return x, y
        keep = y != target
        if not keep.any():
            raise ConfigError(f"{type(self).__name__}: no training image outside the target class {target}")
        return x[keep], y[keep]

    @property
    def fit_queries(self) -> int:
        """Forward+backward passes (per image) spent fitting every patch so far."""
        return int(sum(entry["queries"] for entry in self.fit_log.values()))

    # ------------------------------------------------------------------------------------- subclass hooks

    @abc.abstractmethod
    def _patch(self, model: Any, size: float, target: int | None) -> torch.Tensor:
        """The fitted (C, s, s) patch for ``size`` and goal class ``target`` (fitted on first use)."""

    @abc.abstractmethod
    def _labels(self, target: Any, x_adv: torch.Tensor) -> torch.Tensor:
        """Top-1 labels of the attacked model on ``x_adv`` (one query per image)."""

    # ------------------------------------------------------------------------------------- attack

    def run(
        self,
        target: Any,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        targets: torch.Tensor | None,
        starting_points: torch.Tensor | None,
    ) -> AttackResult:
        size = self.sizes[-1]  # x_adv is the largest patch; the others are measured in extra_metrics
        goal, _ = self.goal(y, targets)
        x_adv, placement = self.apply(x, self.patches_for(target, size, goal, len(x)), self._eval_generator(x.device))
        labels = self._labels(target, x_adv)
        return AttackResult(
            x=x,
            x_adv=x_adv,
            success=is_adversarial(labels, y, targets),
            queries=torch.ones(len(x), dtype=torch.long, device=x.device),  # the success check
            extras={
                "size": size,
                "patch_side": self.side(size, x.shape[1:]),
                "fit_queries": self.fit_queries,
                **placement,
            },
        )

    def _eval_generator(self, device: torch.device, offset: int = 0) -> torch.Generator:
        return make_generator(self.seed + EVAL_STREAM + offset, device)

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
        """``patch_success`` (fraction of the attacked images, of other classes than ``target_class`` when it is
        set, whose prediction is the goal class, or changed when untargeted), ``patch_success@<size>`` for every
        size (the other sizes' patches pasted at fresh seeded positions) and ``patch_fit_queries``."""
        goal, eligible = self.goal(y, targets)
        idx = (attacked & eligible).nonzero().squeeze(1)
        out: dict[str, float | None] = {"patch_success": None}
        out.update({f"patch_success@{s:g}": None for s in self.sizes})
        if len(idx):
            main = self.sizes[-1]
            out["patch_success"] = out[f"patch_success@{main:g}"] = self._hit_rate(
                model, x_adv[idx], y[idx], None if goal is None else goal[idx], batch_size
            )
            for size in self.sizes[:-1]:
                out[f"patch_success@{size:g}"] = self._size_rate(model, x[idx], y[idx], goal, idx, size, batch_size)
        out["patch_fit_queries"] = float(self.fit_queries)
        return out

    @torch.no_grad()
    def _hit_rate(
        self, model: Classifier, x_adv: torch.Tensor, y: torch.Tensor, goal: torch.Tensor | None, batch_size: int
    ) -> float:
        pred = model.predict(x_adv, batch_size)
        hit = pred == goal if goal is not None else pred != y
        return float(hit.float().mean())

    def _size_rate(
        self,
        model: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        goal: torch.Tensor | None,
        idx: torch.Tensor,
        size: float,
        batch_size: int,
    ) -> float:
        g = None if goal is None else goal[idx]
        device = model.device
        gen = self._eval_generator(device, offset=1)
        adv = []
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size].to(device)
            gb = None if g is None else g[i : i + batch_size]
            adv.append(self.apply(xb, self.patches_for(model, size, gb, len(xb)), gen)[0].cpu())
        return self._hit_rate(model, torch.cat(adv), y, g, batch_size)

"""Native decision-based attacks: HSJA and its projected-probe successors QEBA, NonLinear-BA and PSBA.

All run the one loop of :mod:`.loop`; they differ only in where the probes come from (:mod:`.probes`):

- ``HSJA``: Chen, Jordan, Wainwright, "HopSkipJumpAttack", IEEE S&P 2020 — full-space Gaussian
  (L2) / uniform (Linf) probes, the paper's constants (gamma 1, B_t = 100·sqrt(t)).
- ``QEBA_S`` / ``QEBA_F`` / ``QEBA_I``: Li, Xu, Zhang, Yang, Li, "QEBA: Query-Efficient Boundary-Based
  Blackbox Attack", CVPR 2020 — spatial (up-sampled), frequency (low DCT block) and intrinsic-component
  (PCA of surrogate gradients) subspaces.
- ``NLBA``: Li, Li, Xu, Zhang, Yang, Li, "Nonlinear Projection Based Gradient Estimation for Query
  Efficient Blackbox Attacks", AISTATS 2021 — AE / VAE / GAN decoders of surrogate gradients.
- ``PSBA``: Zhang*, Li*, Li, Zhang, Yang, Li, "Progressive-Scale Blackbox Attack via Projective Gradient
  Estimation", ICML 2021 — a progressive GAN's output at a chosen scale.

The QEBA-family attacks default to the authors' constants (``constants: qeba``: gamma 0.01, theta =
gamma/sqrt(d), delta = 0.01·dist, a fixed 100 probes per iteration), which is also how the authors ran
their "HSJA" baseline; ``HSJA(constants="qeba")`` reproduces that baseline.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm

from advsuite.attack import Access, Attack, AttackResult, PrepareContext
from advsuite.attacks.boundary.priors.base import Prior
from advsuite.configs import to_plain
from advsuite.errors import ConfigError, InputError
from advsuite.oracles import LabelOracle
from advsuite.validation import check_choice, check_flags, check_int, check_number

from .loop import CONSTANT_SETS, PROBE_SCHEDULES, LoopSettings, hsja_loop
from .probes import (
    DCTProbes,
    FullSpace,
    GaussianProbes,
    PriorProbes,
    ProbeGenerator,
    ProgressiveProbes,
    ResizeProbes,
    SpectrumProbes,
    UniformProbes,
    Widening,
    auto_factor,
    auto_scale,
)

NORMS = ("l2", "linf")
DEFAULT_GAMMA = {"hsja": 1.0, "qeba": 0.01}
DEFAULT_SCHEDULE = {"hsja": "sqrt", "qeba": "constant"}


@dataclass
class HSJA(Attack):
    """HopSkipJumpAttack, native and batched over images and probes (see :mod:`.loop`).

    ``budget`` and ``max_batch`` are read by the pipeline to build the :class:`LabelOracle`; called
    directly, the oracle passed in decides them. ``gamma`` and ``probe_schedule`` left at None follow
    ``constants``: hsja → gamma 1, B_t = num_probes·sqrt(t) capped at ``max_probes``; qeba → gamma 0.01,
    a constant ``num_probes``. ``iterations`` None runs until each image's budget is spent.
    """

    access: ClassVar[Access] = "label"

    budget: int | None = 1000
    max_batch: int = 1000
    norm: str = "l2"
    targeted: bool = False
    constants: str = "hsja"
    gamma: float | None = None
    num_probes: int = 100
    probe_schedule: str | None = None
    max_probes: int = 10000
    iterations: int | None = None
    init_tries: int = 1000
    blend_tolerance: float = 1e-3
    max_halvings: int = 30
    seed: int = 0
    verbose: bool = True

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if self.budget is not None:
            check_int(owner, "budget", self.budget, 1)
        check_int(owner, "max_batch", self.max_batch, 1)
        check_choice(owner, "norm", self.norm, NORMS)
        check_choice(owner, "constants", self.constants, CONSTANT_SETS)
        check_number(owner, "gamma", self.gamma)
        check_int(owner, "num_probes", self.num_probes, 1)
        if self.probe_schedule is not None:
            check_choice(owner, "probe_schedule", self.probe_schedule, PROBE_SCHEDULES)
        check_int(owner, "max_probes", self.max_probes, 1)
        if self.iterations is not None:
            check_int(owner, "iterations", self.iterations, 1)
        check_int(owner, "init_tries", self.init_tries, 1)
        check_number(owner, "blend_tolerance", self.blend_tolerance)
        check_int(owner, "max_halvings", self.max_halvings, 0)
        check_int(owner, "seed", self.seed, 0)
        check_flags(owner, self, "targeted", "verbose")

    def settings(self) -> LoopSettings:
        return LoopSettings(
            norm=self.norm,
            constants=self.constants,
            gamma=float(self.gamma if self.gamma is not None else DEFAULT_GAMMA[self.constants]),
            num_probes=self.num_probes,
            probe_schedule=self.probe_schedule or DEFAULT_SCHEDULE[self.constants],
            max_probes=self.max_probes,
            iterations=self.iterations,
            init_tries=self.init_tries,
            blend_tolerance=float(self.blend_tolerance),
            max_halvings=self.max_halvings,
        )

    def probes(self, oracle: LabelOracle) -> ProbeGenerator:
        """The probe generator; subclasses swap it."""
        return GaussianProbes() if self.norm == "l2" else UniformProbes()

    def run(
        self,
        target: LabelOracle,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        targets: torch.Tensor | None,
        starting_points: torch.Tensor | None,
    ) -> AttackResult:
        probes = self.probes(target)
        total = None if target.budget is None else target.budget * len(x)
        with (
            torch.no_grad(),
            tqdm(total=total, desc=type(self).__name__, unit="q", disable=not self.verbose, leave=False) as bar,
        ):

            def progress() -> None:
                bar.update(int(target.n_queries.sum()) - bar.n)

            state = hsja_loop(
                target, x, y, targets, starting_points, probes, self.settings(), self.seed, on_iteration=progress
            )
        return AttackResult(
            x=x,
            x_adv=state.best,
            success=state.found.clone(),
            queries=target.n_queries.clone(),
            trace=state.traces(),
            extras={"stop_reason": state.reason, "iterations": state.iterations.tolist()},
        )


WIDEN_RULES = ("none", "stall")


@dataclass
class ProjectedHSJA(HSJA):
    """The HSJA loop with probes from a subspace or a learned prior, widened where progress stalls.

    ``widen: stall`` (:class:`.probes.Widening`): after every iteration an image whose distance fell by
    less than ``widen_tolerance`` over the last ``widen_patience`` iterations draws ``widen_step`` more of
    its probes from the full space. The papers keep the subspace fixed (``widen: none``, the
    ``qeba_*_fixed`` configs); we widen by default because a fixed subspace levels off below HSJA at 5k–10k
    queries on 32-px inputs (docs/benchmarks.md). Defaults (2 iterations, 2%, half the probes per stall)
    were chosen on 15 images of the second CIFAR-10 victim: the earlier 4 iterations and a quarter widened
    too slowly there (1.1–1.6× HSJA's MSE at 5k).
    """

    constants: str = "qeba"
    widen: str = "stall"
    widen_patience: int = 2
    widen_tolerance: float = 0.02
    widen_step: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        check_choice(owner, "widen", self.widen, WIDEN_RULES)
        check_int(owner, "widen_patience", self.widen_patience, 1)
        check_number(owner, "widen_tolerance", self.widen_tolerance, low=0.0, strict=False)
        check_number(owner, "widen_step", self.widen_step)

    def probes(self, oracle: LabelOracle) -> ProbeGenerator:
        inner = self.projected_probes(oracle)
        if self.widen == "none":
            return inner
        return Widening(inner, self.widen_patience, self.widen_tolerance, min(1.0, self.widen_step))

    @abc.abstractmethod
    def projected_probes(self, oracle: LabelOracle) -> FullSpace:
        """The subspace or prior probes; subclasses say which."""


@dataclass
class QEBA_S(ProjectedHSJA):
    """QEBA-S: probes are N(0, 1) noise on a (H/factor, W/factor) grid, bilinearly up-sampled.

    ``factor="auto"`` follows the authors' code: 4 at 224 px (d/16 dimensions), 2 at CIFAR's 32 px (d/4);
    we use 2 up to 64 px and 4 above (:func:`.probes.auto_factor`).
    """

    factor: float | str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_factor(type(self).__name__, self.factor)

    def projected_probes(self, oracle: LabelOracle) -> FullSpace:
        return ResizeProbes(resolve_factor(self.factor, oracle.input_shape))


@dataclass
class QEBA_F(ProjectedHSJA):
    """QEBA-F: Gaussian coefficients in the low-frequency (H/factor, W/factor) DCT block, inverse DCT.

    ``factor="auto"`` as QEBA-S: 2 up to 64 px (the authors' ``DCT768`` on CIFAR-10), 4 above (``DCT9408``).
    """

    factor: float | str = "auto"
    orthogonalize: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_factor(type(self).__name__, self.factor)
        check_flags(type(self).__name__, self, "orthogonalize")

    def projected_probes(self, oracle: LabelOracle) -> FullSpace:
        return DCTProbes(resolve_factor(self.factor, oracle.input_shape), self.orthogonalize)


def check_factor(owner: str, factor: float | str) -> None:
    """``auto`` or a number >= 1."""
    if factor != "auto":
        check_number(owner, "factor", factor, low=1.0, strict=False)  # type: ignore[arg-type]


def resolve_factor(factor: float | str, input_shape: tuple[int, ...]) -> float:
    return auto_factor(input_shape) if factor == "auto" else float(factor)


@dataclass
class PriorAttack(ProjectedHSJA):
    """An HSJA-loop attack whose probes come from a learned prior (a spec dict or a loaded :class:`Prior`).

    A spec is loaded (trained on demand and cached) by :meth:`prepare`, which ``task=evaluate`` calls; from
    Python call ``attack.prepare(PrepareContext(...))`` or pass ``prior=`` a loaded prior.
    """

    prior: Any = None
    #: k > 0: probes are Gaussian combinations of the top k principal components of the prior's samples
    spectrum: int = 0
    #: prior kinds this attack accepts
    kinds: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        self.prior = to_plain(self.prior)
        owner = type(self).__name__
        kind: object
        if isinstance(self.prior, Prior):
            kind = self.prior.kind
        elif isinstance(self.prior, Mapping):
            kind = self.prior.get("kind")
        else:
            raise ConfigError(f"{owner}: prior must be a prior spec (a mapping with `kind`) or a loaded Prior")
        check_choice(owner, "prior kind", kind, self.kinds)
        check_int(owner, "spectrum", self.spectrum, 0)

    def prepare(self, context: PrepareContext) -> None:
        if isinstance(self.prior, Prior):
            return
        from advsuite.attacks.boundary.priors import load_prior

        self.prior = load_prior(
            self.prior,
            context.data,
            device=context.device,
            cache_dir=context.cache_dir,
            seed=context.seed,
            verbose=context.verbose,
            victim_arch=context.victim_arch,
        )

    def loaded_prior(self, oracle: LabelOracle) -> Prior:
        if not isinstance(self.prior, Prior):
            raise InputError(
                f"{type(self).__name__}: the prior is not loaded; call attack.prepare(PrepareContext(...)) "
                "or pass prior= a loaded advsuite.attacks.boundary.priors.Prior"
            )
        if tuple(self.prior.input_shape) != tuple(oracle.input_shape):
            raise InputError(
                f"{type(self).__name__}: the prior was learned for inputs {tuple(self.prior.input_shape)}, "
                f"the model takes {tuple(oracle.input_shape)}"
            )
        return self.prior.to(oracle.device).eval()

    def projected_probes(self, oracle: LabelOracle) -> FullSpace:
        prior = self.loaded_prior(oracle)
        if self.spectrum:
            return SpectrumProbes(prior, self.spectrum, None, oracle.input_shape)
        return PriorProbes(prior)


@dataclass
class QEBA_I(PriorAttack):
    """QEBA-I: probes from the PCA basis of surrogate-model input gradients (prior kind ``pca``).

    The authors' QEBA-I draws one random basis vector per probe (``basis_only``, the PCA prior's default).
    """

    kinds: ClassVar[tuple[str, ...]] = ("pca",)


@dataclass
class NLBA(PriorAttack):
    """NonLinear-BA: probes are decoder outputs of random latents (prior kind ``ae``, ``vae`` or ``gan``)."""

    kinds: ClassVar[tuple[str, ...]] = ("ae", "vae", "gan")


@dataclass
class PSBA(PriorAttack):
    """PSBA-PGAN: probes from a progressive GAN at one output ``scale``, up-sampled to the input size.

    ``scale``: ``progressive`` (default) searches each image's scale from the smallest up on the attack's
    own queries, the paper's self-adaptive search (:class:`.probes.ScaleSearch`, whose docstring states the
    rule); an integer fixes it (1-based, 1 = the generator's smallest output); ``auto`` takes the scale
    nearest input side / 8, the best scale in the authors' released logs (:func:`.probes.auto_scale`).
    ``dct_factor`` > 1 uses a frequency scale instead (keep the low (H/k, W/k) DCT block); ``spectrum`` k > 0
    the spectrum scale (Gaussian combinations of the top k principal components of the generator's outputs at
    the fixed scale, or at full resolution with ``progressive``; :class:`.probes.SpectrumProbes`). ``orient``
    flips probes towards the original image as the authors' code does (not for the spectrum scale, as theirs).
    """

    kinds: ClassVar[tuple[str, ...]] = ("pgan",)
    scale: int | str = "progressive"
    dct_factor: float = 1.0
    orient: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        if self.scale not in ("auto", "progressive"):
            check_int(owner, "scale", self.scale, 1)
        check_number(owner, "dct_factor", self.dct_factor, low=1.0, strict=False)
        check_flags(owner, self, "orient")

    def chosen_scale(self, prior: Prior) -> int | None:
        """The fixed scale, or None for the progressive search."""
        if self.scale == "progressive":
            return None
        # a scale is (height, width); its side is the larger
        sizes = [max(s) if isinstance(s, tuple | list) else int(s) for s in getattr(prior, "scale_sizes", [])]
        if self.scale == "auto":
            return auto_scale(sizes, max(prior.input_shape[1:]))
        if not 1 <= int(self.scale) <= len(sizes):
            raise ConfigError(f"PSBA: scale must be between 1 and {len(sizes)} for this prior, got {self.scale}")
        return int(self.scale)

    def projected_probes(self, oracle: LabelOracle) -> FullSpace:
        prior = self.loaded_prior(oracle)
        scale = self.chosen_scale(prior)
        if self.spectrum:
            full = len(getattr(prior, "scale_sizes", [])) or 1
            return SpectrumProbes(prior, self.spectrum, scale or full, oracle.input_shape)
        return ProgressiveProbes(prior, scale, self.dct_factor, self.orient)

"""The attack protocol: what every attack receives and returns."""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from advsuite.errors import ConfigError
from advsuite.models.classifier import Classifier
from advsuite.oracles import LabelOracle, ScoreOracle
from advsuite.validation import check_known_options

Access = Literal["whitebox", "score", "label"]
Target = Classifier | LabelOracle | ScoreOracle


@dataclass
class PrepareContext:
    """What a run knows besides the target, for attacks that need artifacts first (e.g. learned priors).

    ``victim_arch`` is the attacked model's architecture name (or None when unknown); attacks whose
    artifacts come from surrogate models use it to refuse a surrogate of the victim's architecture.
    ``data`` is the run's :class:`advsuite.data.DataBundle` (typed loosely to keep this module light).
    """

    data: Any
    device: torch.device
    cache_dir: Path
    seed: int = 0
    verbose: bool = True
    victim_arch: str | None = None


def distances(x: torch.Tensor, x_adv: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample L2, Linf and per-pixel MSE between two batches."""
    delta = (x_adv - x).flatten(1).float()
    return {
        "l2": delta.norm(p=2, dim=1),
        "linf": delta.abs().amax(dim=1) if delta.shape[1] else torch.zeros(len(delta)),
        "mse": delta.pow(2).mean(dim=1),
    }


@dataclass
class AttackResult:
    """What an attack returns, per sample.

    ``success`` is the attack's own claim; the evaluate pipeline re-checks it with a fresh
    forward pass. Fixed-epsilon attacks called with several epsilons fill ``epsilons``,
    ``x_adv_by_eps`` and ``success_by_eps``; ``x_adv`` is then the result at the largest epsilon.
    Query attacks fill ``trace``: one (T, 2) tensor per sample of (queries so far, L2 distance).
    """

    x: torch.Tensor
    x_adv: torch.Tensor
    success: torch.Tensor
    queries: torch.Tensor
    epsilons: list[float] | None = None
    x_adv_by_eps: list[torch.Tensor] | None = None
    success_by_eps: torch.Tensor | None = None
    trace: list[torch.Tensor] | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def distances(self) -> dict[str, torch.Tensor]:
        return distances(self.x, self.x_adv)

    def to(self, device: torch.device | str) -> AttackResult:
        def move(t: Any) -> Any:
            if isinstance(t, torch.Tensor):
                return t.to(device)
            if isinstance(t, list):
                return [move(v) for v in t]
            return t

        return AttackResult(
            x=move(self.x),
            x_adv=move(self.x_adv),
            success=move(self.success),
            queries=move(self.queries),
            epsilons=self.epsilons,
            x_adv_by_eps=move(self.x_adv_by_eps),
            success_by_eps=move(self.success_by_eps),
            trace=move(self.trace),
            extras=self.extras,
        )


def attack_options(cls: type[Attack]) -> list[str]:
    """The options an attack class takes: its dataclass fields set at construction (not its private state)."""
    if not dataclasses.is_dataclass(cls):
        raise ConfigError(f"{cls.__name__} is not a dataclass: an advsuite Attack declares its options as fields")
    return sorted(f.name for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_"))


def construct_attack(cls: Any, options: Mapping[str, Any], label: str) -> Attack:
    """``cls(**options)`` after checking that ``cls`` is an Attack and knows every option.

    ``label`` names the attack in messages (its config name, e.g. ``attack pgd``). An unknown option
    gets the list of valid ones and the closest match; a bad value gets the attack's own message.
    """
    if getattr(cls, "threat", None) == "poison" and not (isinstance(cls, type) and issubclass(cls, Attack)):
        raise ConfigError(f"{label} is a poisoning (backdoor) attack: run it with task=backdoor, "
                          f"e.g. python -m advsuite task=backdoor {label.replace('attack ', 'attack=')}")  # fmt: skip
    if not (isinstance(cls, type) and issubclass(cls, Attack)):
        raise ConfigError(f"{label}: {cls!r} is not an advsuite Attack")
    valid = attack_options(cls)
    check_known_options(options, valid, label)
    try:
        return cls(**options)
    except TypeError as exc:  # e.g. a required option left out
        raise ConfigError(f"{label}: {exc}; valid options: {', '.join(valid)}") from exc


class Attack(abc.ABC):
    """Base class: a callable holding only hyper-parameters.

    Subclasses are dataclasses whose fields are the hyper-parameters (validated in
    ``__post_init__``) and implement :meth:`run`. What the pipeline reads from an attack is declared
    here, and nothing else: ``access`` says what the attack is given (the differentiable Classifier,
    ``whitebox``; a :class:`ScoreOracle`, ``score``; a :class:`LabelOracle`, ``label``), ``norm`` the
    norm its distances and epsilons are in, ``targeted`` whether it needs target classes. Query attacks
    (``score``/``label``) declare ``budget`` (queries per image, the oracle's hard limit; ``None`` = no
    limit) and ``max_batch`` (rows per model call) as fields; fixed-epsilon attacks derive from
    :class:`FixedEpsilonAttack`.
    """

    access: ClassVar[Access] = "whitebox"
    #: what the attack threatens: ``evasion`` (test inputs); poisoning attacks (``poison``) are not Attacks
    threat: ClassVar[str] = "evasion"
    #: the norm distances are reported in; "linf" or "l2"
    norm: str = "l2"
    #: fixed-epsilon attacks say so; minimisation attacks report distance instead
    fixed_epsilon: ClassVar[bool] = False
    #: the :meth:`extra_metrics` the leaderboard shows, metric -> column title; records carry them
    leaderboard_metrics: ClassVar[Mapping[str, str]] = {}
    targeted: bool = False
    #: query attacks: queries per image (the oracle's budget; None = unlimited) and rows per model call
    budget: int | None = None
    max_batch: int = 1000

    def __call__(
        self,
        target: Target,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        targets: torch.Tensor | None = None,
        starting_points: torch.Tensor | None = None,
    ) -> AttackResult:
        from advsuite.validation import check_images, check_labels

        bounds = target.bounds
        check_images(x, bounds=bounds, shape=target.input_shape)
        check_labels(y, len(x), target.num_classes)
        if targets is not None:
            check_labels(targets, len(x), target.num_classes, name="targets")
        if self.targeted and targets is None:
            raise ValueError(f"{type(self).__name__} is targeted: pass targets=")
        if starting_points is not None:
            check_images(starting_points, bounds=bounds, shape=target.input_shape, name="starting_points")
        if self.access == "whitebox" and not isinstance(target, Classifier):
            raise TypeError(f"{type(self).__name__} is white-box: pass the Classifier, not an oracle")
        if self.access == "label" and not isinstance(target, LabelOracle):
            raise TypeError(f"{type(self).__name__} is decision-based: pass a LabelOracle")
        if self.access == "score" and not isinstance(target, ScoreOracle):
            raise TypeError(f"{type(self).__name__} is score-based: pass a ScoreOracle")
        device = target.device
        x, y = x.to(device), y.to(device)
        targets = targets.to(device) if targets is not None else None
        if isinstance(target, Classifier):
            with target.evaluating():
                return self.run(target, x, y, targets=targets, starting_points=starting_points)
        return self.run(target, x, y, targets=targets, starting_points=starting_points)

    def prepare(self, context: PrepareContext) -> None:  # noqa: B027 - optional hook, no-op by default
        """Build or load what the attack needs before it runs (called once by ``task=evaluate``)."""

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
        """Attack-specific summary metrics, measured afresh after the run (e.g. fooling rate, evasive success).

        Called by :func:`advsuite.evaluation.evaluate` with all ``n`` images (on the CPU), the returned
        ``x_adv`` and the ``attacked`` mask; the keys join the record's metrics and, when declared in
        :attr:`leaderboard_metrics`, the leaderboard. Default: none.
        """
        return {}

    @abc.abstractmethod
    def run(
        self,
        target: Any,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        targets: torch.Tensor | None,
        starting_points: torch.Tensor | None,
    ) -> AttackResult:
        """The algorithm; inputs are already validated and on the target's device."""


def as_epsilons(owner: str, eps: Any) -> list[float]:
    """``eps`` as a non-empty list of floats >= 0 (a single number or any sequence, e.g. a Hydra ListConfig)."""
    values = [eps] if isinstance(eps, int | float) and not isinstance(eps, bool) else eps
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ConfigError(f"{owner}: eps must be a number or a list of numbers, got {eps!r}") from None
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise ConfigError(f"{owner}: eps must be a non-empty list of finite numbers >= 0, got {eps!r}")
    return values


class FixedEpsilonAttack(Attack):
    """An attack bounded by ``eps`` in its ``norm`` (one number, or a list for a robust-accuracy curve).

    The pipeline re-checks each result inside its ball and reports robust accuracy at every epsilon in
    :attr:`epsilons`; an attack called with several returns ``x_adv_by_eps`` (``x_adv`` at the largest).
    """

    fixed_epsilon: ClassVar[bool] = True
    eps: float | list[float]

    @property
    def epsilons(self) -> list[float]:
        """The epsilons, ascending."""
        return sorted(as_epsilons(type(self).__name__, self.eps))

    def _normalise_eps(self) -> None:
        """For ``__post_init__``: check ``eps`` and keep a list sorted (a single number stays one)."""
        epsilons = as_epsilons(type(self).__name__, self.eps)
        self.eps = epsilons[0] if isinstance(self.eps, int | float) else sorted(epsilons)

    def run_each_eps(
        self,
        x: torch.Tensor,
        attack_eps: Callable[[float, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        queries: torch.Tensor | None = None,
        extras: dict[str, Any] | None = None,
    ) -> AttackResult:
        """The result of ``attack_eps(eps, queries) -> (x_adv, success)`` at every epsilon, ascending; each call
        adds its queries to the one per-image counter, and ``x_adv``/``success`` are the largest epsilon's."""
        if queries is None:
            queries = torch.zeros(len(x), dtype=torch.long, device=x.device)
        by_eps, success_by_eps = zip(*(attack_eps(eps, queries) for eps in self.epsilons), strict=True)
        return AttackResult(
            x=x,
            x_adv=by_eps[-1],
            success=success_by_eps[-1],
            queries=queries,
            epsilons=self.epsilons,
            x_adv_by_eps=list(by_eps),
            success_by_eps=torch.stack(success_by_eps),
            extras=extras or {},
        )

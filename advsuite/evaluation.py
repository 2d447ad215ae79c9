"""Run an attack on a set of images, re-check its claims and summarise the outcome.

This is the part of ``task=evaluate`` that needs no config: the Python API calls it directly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from advsuite.attack import Attack, AttackResult, FixedEpsilonAttack, distances
from advsuite.errors import ConfigError, InputError
from advsuite.models.classifier import Classifier
from advsuite.oracles import LabelOracle, ScoreOracle, is_adversarial
from advsuite.plots import distance_at_queries, quantiles_with_inf
from advsuite.results.record import finite_number
from advsuite.validation import check_images, check_labels

# a fixed-epsilon result counts only if its perturbation is inside the ball (float slack)
EPS_TOLERANCE = 1e-5
#: query budgets at which query attacks are summarised (the QEBA/HSJA papers' 1k/2k/5k/10k)
DEFAULT_BUDGETS: tuple[int, ...] = (1000, 2000, 5000, 10000)
#: per-pixel MSE under which an adversarial counts as a success in ``success_rate_at``
DEFAULT_MSE_THRESHOLD = 1e-3
#: the keys :func:`query_metrics` adds to the metrics (all ``None`` for attacks without traces)
QUERY_METRIC_KEYS = (
    "query_reach",
    "median_mse_at",
    "geomean_mse_at",
    "median_l2_at",
    "n_found_at",
    "success_rate_at",
    "success_rate_l2_at",
)


@dataclass
class Evaluation:
    """Per-sample outcomes (over all ``n`` images) and summary metrics of one attack run."""

    metrics: dict[str, Any]
    #: lists over all ``n`` images; ``mse_at``/``l2_at`` are {budget: list or None} (query attacks)
    per_sample: dict[str, Any]
    x: torch.Tensor
    x_adv: torch.Tensor
    attacked: torch.Tensor
    traces: list[torch.Tensor] = field(default_factory=list)
    epsilons: list[float] | None = None
    robust_by_eps: list[float] | None = None
    oracle_stats: dict[str, float] = field(default_factory=dict)
    #: whether the attack returned traces (``traces`` holds one per attacked image, in order)
    traced: bool = False
    #: the attack's leaderboard metrics (metric -> column title, :attr:`Attack.leaderboard_metrics`)
    metric_titles: dict[str, str] = field(default_factory=dict)


def _median(values: torch.Tensor) -> float | None:
    return float(values.float().median()) if len(values) else None


def _mean(values: torch.Tensor) -> float | None:
    return float(values.float().mean()) if len(values) else None


def _inside_ball(x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    d = distances(x, x_adv)["linf" if norm == "linf" else "l2"]
    return d <= eps + EPS_TOLERANCE


def check_budgets(budgets: Sequence[int | float]) -> list[int]:
    """Sorted, de-duplicated positive integer query budgets; a clear error otherwise."""
    out: set[int] = set()
    for b in budgets:
        if isinstance(b, bool) or not isinstance(b, int | float) or not math.isfinite(b) or b <= 0 or b != int(b):
            raise ConfigError(f"query budgets must be positive whole numbers of queries, got {list(budgets)!r}")
        out.add(int(b))
    return sorted(out)


def query_metrics(
    traces: Sequence[torch.Tensor],
    n_dims: int,
    *,
    budgets: Sequence[int] = DEFAULT_BUDGETS,
    mse_threshold: float | None = DEFAULT_MSE_THRESHOLD,
    l2_threshold: float | None = None,
    reach: float | None = None,
) -> tuple[dict[str, Any], dict[str, dict[str, list[float | None] | None]]]:
    """Budget metrics from the traces of the attacked images: ``(metrics, per_sample)``.

    ``traces`` holds one (T, 2) trace of (queries, L2) per attacked image; an empty trace is an
    image the attack never made adversarial. At budget ``b`` an image's distance is that of the
    best adversarial found within ``b`` queries, the trace read as a step function
    (:func:`advsuite.plots.distance_at_queries`), and ``inf`` if it has none yet. MSE is
    ``l2**2 / n_dims`` (per-pixel MSE, the papers' distortion; ``n_dims`` = C·H·W).

    Per budget (string keys, as JSON has them): ``median_mse_at`` and ``median_l2_at``, the
    median over attacked images with ``inf`` sorting last (interpolated between the two middle
    images; so it is undefined, ``None``, when an ``inf`` takes part: in practice, when about half
    the images or more have no adversarial yet); ``geomean_mse_at``, the geometric mean over the
    images that have an adversarial (``None`` if none has), to be read with ``n_found_at``, the
    number of them; ``success_rate_at``, the fraction of attacked images with MSE ≤
    ``mse_threshold``, and ``success_rate_l2_at`` with L2 ≤ ``l2_threshold`` (whole key ``None``
    when that threshold is ``None``). Budgets above ``reach`` (how far the run could go; by
    default the largest query count in any trace) are not measured: every value there is ``None``.

    ``per_sample`` holds ``mse_at`` and ``l2_at``: per budget, one value per attacked image
    (``None`` for no adversarial yet), or ``None`` beyond ``reach``.
    """
    budgets = check_budgets(budgets)
    if n_dims <= 0:
        raise ConfigError(f"n_dims must be the number of values in one image (C*H*W), got {n_dims}")
    if reach is None:
        reach = max((float(t[:, 0].max()) for t in traces if len(t)), default=0.0)
    grid = torch.tensor(budgets, dtype=torch.float64)
    l2 = torch.stack([distance_at_queries(t, grid) for t in traces]) if len(traces) else torch.zeros(0, len(budgets))
    l2 = l2.to(torch.float64)
    mse = l2.pow(2) / n_dims
    metrics: dict[str, Any] = {"query_reach": finite_number(reach)}
    per_sample: dict[str, dict[str, list[float | None] | None]] = {"mse_at": {}, "l2_at": {}}
    for name in QUERY_METRIC_KEYS[1:]:
        metrics[name] = {}
    n = len(traces)
    for j, b in enumerate(budgets):
        key = str(b)
        if b > reach:
            for name in QUERY_METRIC_KEYS[1:]:
                metrics[name][key] = None
            per_sample["mse_at"][key] = per_sample["l2_at"][key] = None
            continue
        col_mse, col_l2 = mse[:, j], l2[:, j]
        found = torch.isfinite(col_mse)
        metrics["median_mse_at"][key] = _finite_median(col_mse)
        metrics["median_l2_at"][key] = _finite_median(col_l2)
        metrics["geomean_mse_at"][key] = float(col_mse[found].log().mean().exp()) if found.any() else None
        metrics["n_found_at"][key] = int(found.sum())
        metrics["success_rate_at"][key] = (
            float((col_mse <= mse_threshold).double().mean()) if n and mse_threshold is not None else None
        )
        metrics["success_rate_l2_at"][key] = (
            float((col_l2 <= l2_threshold).double().mean()) if n and l2_threshold is not None else None
        )
        per_sample["mse_at"][key] = [finite_number(v) for v in col_mse.tolist()]
        per_sample["l2_at"][key] = [finite_number(v) for v in col_l2.tolist()]
    if mse_threshold is None:
        metrics["success_rate_at"] = None
    if l2_threshold is None:
        metrics["success_rate_l2_at"] = None
    return metrics, per_sample


def _finite_median(values: torch.Tensor) -> float | None:
    return finite_number(float(quantiles_with_inf(values, (0.5,))[0, 0])) if len(values) else None


def _attack_batch(
    model: Classifier,
    attack: Attack,
    x: torch.Tensor,
    y: torch.Tensor,
    targets: torch.Tensor | None,
    starting_points: torch.Tensor | None,
) -> tuple[AttackResult, torch.Tensor, dict[str, float]]:
    """Attack one batch through the access the threat model allows; return the oracle's query count."""
    stats: dict[str, float] = {}
    if attack.access == "whitebox":
        result = attack(model, x, y, targets=targets, starting_points=starting_points)
        return result, result.queries.cpu(), stats
    oracle_cls = LabelOracle if attack.access == "label" else ScoreOracle
    oracle = oracle_cls(model, n=len(x), budget=attack.budget, max_batch=attack.max_batch)
    result = attack(oracle, x, y, targets=targets, starting_points=starting_points)
    queries = oracle.n_queries.cpu()  # the oracle's count, not the attack's bookkeeping
    stats = {"calls": oracle.n_calls, "rows": float(queries.sum()), "forward_seconds": oracle.forward_seconds}
    return result, queries, stats


def evaluate(
    model: Classifier,
    attack: Attack,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    targets: torch.Tensor | None = None,
    starting_points: torch.Tensor | None = None,
    batch_size: int = 256,
    verbose: bool = True,
    budgets: Sequence[int] = DEFAULT_BUDGETS,
    mse_threshold: float | None = DEFAULT_MSE_THRESHOLD,
    l2_threshold: float | None = None,
) -> Evaluation:
    """Attack the images the model classifies correctly and re-check every claimed success.

    Misclassified images are not attacked: they count as non-robust with zero distance.
    Success is recomputed with a fresh forward pass of ``model``; ``flips`` counts samples the
    attack claimed that the re-check rejects (decision-based attacks end within ~1e-6 of the
    boundary, so this is reported rather than hidden).

    For attacks that return traces, the metrics also hold the distortion within each query
    budget in ``budgets`` and the success rates at ``mse_threshold`` / ``l2_threshold``
    (:func:`query_metrics`). A budget counts as reached when the attack's own budget
    (``attack.budget``) or the most queries spent on any image is at least that large; the values
    at larger budgets are ``None``. These come from the attack's traces, i.e. its own bookkeeping
    of the best adversarial so far, not from the re-check (compare ``flips``).
    """
    budgets = _checked_options(budgets, mse_threshold, l2_threshold)
    _check_inputs(model, x, y, targets, starting_points)
    x, y = x.cpu(), y.cpu()
    targets = None if targets is None else targets.cpu()
    starting_points = None if starting_points is None else starting_points.cpu()
    clean_correct = model.predict(x, batch_size) == y
    attacked = clean_correct & (targets != y) if targets is not None else clean_correct.clone()
    run = _run_attack(model, attack, x, y, targets, starting_points, attacked, batch_size, verbose)
    success, epsilons, robust_by_eps = _recheck(model, attack, x, y, targets, attacked, clean_correct, run, batch_size)
    dist = distances(x, run.x_adv)
    metrics = _summary(dist, attacked, clean_correct, success, run, epsilons, robust_by_eps)
    for key, value in attack.extra_metrics(
        model, x, y, run.x_adv, attacked, targets=targets, batch_size=batch_size
    ).items():
        if key in metrics:
            raise ConfigError(f"{type(attack).__name__}.extra_metrics returned {key!r}, a standard metric's name")
        metrics[key] = finite_number(value)
    if run.oracle_stats["calls"]:
        metrics["rows_per_call"] = run.oracle_stats["rows"] / run.oracle_stats["calls"]
    idx = attacked.nonzero().squeeze(1)
    attacked_traces = [run.traces[i] for i in idx.tolist()]
    metrics.update(query_budgets=budgets, mse_threshold=mse_threshold, l2_threshold=l2_threshold)
    metrics.update(dict.fromkeys(QUERY_METRIC_KEYS))
    by_budget: dict[str, Any] = {"mse_at": None, "l2_at": None}
    if run.traced:
        at, per_budget = query_metrics(
            attacked_traces,
            math.prod(x.shape[1:]),
            budgets=budgets,
            mse_threshold=mse_threshold,
            l2_threshold=l2_threshold,
            reach=_reach(attack, run, attacked, attacked_traces),
        )
        metrics.update(at)
        by_budget = {name: _spread(values, idx, len(x)) for name, values in per_budget.items()}
    per_sample = _per_sample(dist, y, targets, clean_correct, attacked, success, run) | by_budget
    return Evaluation(
        metrics=metrics,
        per_sample=per_sample,
        x=x,
        x_adv=run.x_adv,
        attacked=attacked,
        traces=attacked_traces,
        epsilons=epsilons,
        robust_by_eps=robust_by_eps,
        oracle_stats=run.oracle_stats,
        traced=run.traced,
        metric_titles=dict(attack.leaderboard_metrics),
    )


# -- the stages of evaluate() -------------------------------------------------------------------------


@dataclass
class _Run:
    """What the attack returned, over all ``n`` images: its own claims, not yet re-checked."""

    x_adv: torch.Tensor
    claimed: torch.Tensor
    queries: torch.Tensor
    traces: list[torch.Tensor]
    traced: bool
    epsilons: list[float] | None
    adv_by_eps: list[torch.Tensor]
    oracle_stats: dict[str, float]


def _checked_options(budgets: Sequence[int], mse_threshold: float | None, l2_threshold: float | None) -> list[int]:
    for name, value in (("mse_threshold", mse_threshold), ("l2_threshold", l2_threshold)):
        if value is not None and not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
            raise ConfigError(f"{name} must be a non-negative number or None, got {value!r}")
    return check_budgets(budgets)


def _run_attack(
    model: Classifier,
    attack: Attack,
    x: torch.Tensor,
    y: torch.Tensor,
    targets: torch.Tensor | None,
    starting_points: torch.Tensor | None,
    attacked: torch.Tensor,
    batch_size: int,
    verbose: bool,
) -> _Run:
    """Attack the ``attacked`` images in chunks of ``batch_size``; gather images, claims, queries, traces."""
    n = len(x)
    run = _Run(x.clone(), torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.long), [], False, None, [], {})
    run.traces = [torch.empty(0, 2) for _ in range(n)]
    run.oracle_stats = {"calls": 0.0, "rows": 0.0, "forward_seconds": 0.0}
    chunks = attacked.nonzero().squeeze(1).split(batch_size)
    for chunk in tqdm(chunks, desc=type(attack).__name__, disable=not verbose or len(chunks) < 2):
        chunk_targets = None if targets is None else targets[chunk]
        chunk_starts = None if starting_points is None else starting_points[chunk]
        result, q, stats = _attack_batch(model, attack, x[chunk], y[chunk], chunk_targets, chunk_starts)
        run.x_adv[chunk] = result.x_adv.detach().cpu()
        run.claimed[chunk] = result.success.cpu()
        run.queries[chunk] = q
        for key, value in stats.items():
            run.oracle_stats[key] += value
        if result.trace is not None:
            run.traced = True
            for i, trace in zip(chunk.tolist(), result.trace, strict=True):
                run.traces[i] = trace.cpu()
        if result.epsilons is not None and result.x_adv_by_eps is not None:
            if not run.adv_by_eps:
                run.epsilons = list(result.epsilons)
                run.adv_by_eps = [x.clone() for _ in run.epsilons]
            for e, adv in enumerate(result.x_adv_by_eps):
                run.adv_by_eps[e][chunk] = adv.detach().cpu()
    return run


def _recheck(
    model: Classifier,
    attack: Attack,
    x: torch.Tensor,
    y: torch.Tensor,
    targets: torch.Tensor | None,
    attacked: torch.Tensor,
    clean_correct: torch.Tensor,
    run: _Run,
    batch_size: int,
) -> tuple[torch.Tensor, list[float] | None, list[float] | None]:
    """The fresh re-check, one forward pass of the model on everything the attack returned:
    ``(success, epsilons, robust accuracy at each epsilon)``; a fixed-epsilon result counts only inside its ball."""

    def fooled(adv: torch.Tensor) -> torch.Tensor:
        return is_adversarial(model.predict(adv, batch_size), y, targets) & attacked

    success = fooled(run.x_adv)
    if not isinstance(attack, FixedEpsilonAttack):
        return success, run.epsilons, None
    epsilons = run.epsilons or attack.epsilons
    robust_by_eps = []
    for eps, adv in zip(epsilons, run.adv_by_eps or [run.x_adv], strict=True):
        broken = fooled(adv) & _inside_ball(x, adv, eps, attack.norm)
        robust_by_eps.append(float((clean_correct & ~broken).float().mean()))
    return success & _inside_ball(x, run.x_adv, epsilons[-1], attack.norm), epsilons, robust_by_eps


def _summary(
    dist: dict[str, torch.Tensor],
    attacked: torch.Tensor,
    clean_correct: torch.Tensor,
    success: torch.Tensor,
    run: _Run,
    epsilons: list[float] | None,
    robust_by_eps: list[float] | None,
) -> dict[str, Any]:
    """Accuracy, success, distances of the successes, queries and flips."""
    won = success & attacked
    n = len(attacked)
    return {
        "n_examples": n,
        "n_attacked": int(attacked.sum()),
        "clean_accuracy": float(clean_correct.float().mean()) if n else None,
        "success_rate": float(success[attacked].float().mean()) if attacked.any() else None,
        "robust_accuracy": robust_by_eps[-1] if robust_by_eps else None,
        "robust_accuracy_by_eps": (
            {str(e): a for e, a in zip(epsilons or [], robust_by_eps, strict=True)} if robust_by_eps else None
        ),
        "median_l2": _median(dist["l2"][won]),
        "mean_l2": _mean(dist["l2"][won]),
        "median_linf": _median(dist["linf"][won]),
        "mean_linf": _mean(dist["linf"][won]),
        "median_mse": _median(dist["mse"][won]),
        "median_queries": _median(run.queries[attacked]),
        "mean_queries": _mean(run.queries[attacked]),
        "flips": int((run.claimed & attacked & ~success).sum()),
    }


def _reach(attack: Attack, run: _Run, attacked: torch.Tensor, attacked_traces: list[torch.Tensor]) -> float:
    """How far in queries the run could go: the attack's budget or the most queries spent on any image."""
    spent = [float(run.queries[attacked].max())] if attacked.any() else []
    spent += [float(t[:, 0].max()) for t in attacked_traces if len(t)]
    return max([*spent, finite_number(attack.budget) or 0.0], default=0.0)


def _per_sample(
    dist: dict[str, torch.Tensor],
    y: torch.Tensor,
    targets: torch.Tensor | None,
    clean_correct: torch.Tensor,
    attacked: torch.Tensor,
    success: torch.Tensor,
    run: _Run,
) -> dict[str, Any]:
    return {
        "label": y.tolist(),
        "target": None if targets is None else targets.tolist(),
        "clean_correct": clean_correct.tolist(),
        "attacked": attacked.tolist(),
        "claimed": run.claimed.tolist(),
        "success": success.tolist(),
        "queries": run.queries.tolist(),
        "l2": dist["l2"].tolist(),
        "linf": dist["linf"].tolist(),
        "mse": dist["mse"].tolist(),
    }


def _check_inputs(
    model: Classifier,
    x: torch.Tensor,
    y: torch.Tensor,
    targets: torch.Tensor | None,
    starting_points: torch.Tensor | None,
) -> None:
    """One clear error for inputs that do not fit together, before anything runs."""
    check_images(x, bounds=model.bounds, shape=model.input_shape, name="x")
    if len(x) == 0:
        raise InputError("x holds no images: give at least one image to evaluate")
    check_labels(y, len(x), model.num_classes, name="y (one label per image in x)")
    if targets is not None:
        check_labels(targets, len(x), model.num_classes, name="targets (one per image in x)")
    if starting_points is not None:
        check_images(starting_points, bounds=model.bounds, shape=model.input_shape, name="starting_points")
        if len(starting_points) != len(x):
            raise InputError(
                f"starting_points must hold one image per image in x ({len(x)}), got {len(starting_points)}"
            )


def _spread(
    by_budget: dict[str, list[float | None] | None], idx: torch.Tensor, n: int
) -> dict[str, list[float | None] | None]:
    """Per-budget lists over the attacked images, spread over all ``n`` (``None`` where not attacked)."""
    out: dict[str, list[float | None] | None] = {}
    for key, values in by_budget.items():
        if values is None:
            out[key] = None
            continue
        full: list[float | None] = [None] * n
        for i, v in zip(idx.tolist(), values, strict=True):
            full[i] = v
        out[key] = full
    return out

"""Run an attack on a set of images, re-check its claims and summarise the outcome.

This is the part of ``task=evaluate`` that needs no config: the Python API calls it directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from advsuite.attack import Attack, AttackResult, distances
from advsuite.models.classifier import Classifier
from advsuite.oracles import LabelOracle, ScoreOracle, is_adversarial

# a fixed-epsilon result counts only if its perturbation is inside the ball (float slack)
EPS_TOLERANCE = 1e-5


@dataclass
class Evaluation:
    """Per-sample outcomes (over all ``n`` images) and summary metrics of one attack run."""

    metrics: dict[str, Any]
    per_sample: dict[str, list[Any] | None]
    x: torch.Tensor
    x_adv: torch.Tensor
    attacked: torch.Tensor
    traces: list[torch.Tensor] = field(default_factory=list)
    epsilons: list[float] | None = None
    robust_by_eps: list[float] | None = None
    oracle_stats: dict[str, float] = field(default_factory=dict)


def _median(values: torch.Tensor) -> float | None:
    return float(values.float().median()) if len(values) else None


def _mean(values: torch.Tensor) -> float | None:
    return float(values.float().mean()) if len(values) else None


def _inside_ball(x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    d = distances(x, x_adv)["linf" if norm == "linf" else "l2"]
    return d <= eps + EPS_TOLERANCE


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
    if attack.threat_model == "whitebox":
        result = attack(model, x, y, targets=targets, starting_points=starting_points)
        return result, result.queries.cpu(), stats
    oracle_cls = LabelOracle if attack.threat_model == "label" else ScoreOracle
    oracle = oracle_cls(
        model, n=len(x), budget=getattr(attack, "budget", None), max_batch=getattr(attack, "max_batch", 1000)
    )
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
) -> Evaluation:
    """Attack the images the model classifies correctly and re-check every claimed success.

    Misclassified images are not attacked: they count as non-robust with zero distance.
    Success is recomputed with a fresh forward pass of ``model``; ``flips`` counts samples the
    attack claimed that the re-check rejects (decision-based attacks end within ~1e-6 of the
    boundary, so this is reported rather than hidden).
    """
    x, y = x.cpu(), y.cpu()
    targets = None if targets is None else targets.cpu()
    starting_points = None if starting_points is None else starting_points.cpu()
    n = len(x)
    clean_pred = model.predict(x, batch_size)
    clean_correct = clean_pred == y
    attacked = clean_correct.clone()
    if targets is not None:
        attacked &= targets != y
    idx = attacked.nonzero().squeeze(1)

    x_adv = x.clone().cpu()
    claimed = torch.zeros(n, dtype=torch.bool)
    queries = torch.zeros(n, dtype=torch.long)
    traces: list[torch.Tensor] = [torch.empty(0, 2) for _ in range(n)]
    epsilons: list[float] | None = None
    adv_by_eps: list[torch.Tensor] = []
    oracle_stats = {"calls": 0.0, "rows": 0.0, "forward_seconds": 0.0}
    chunks = idx.split(batch_size)
    for chunk in tqdm(chunks, desc=type(attack).__name__, disable=not verbose or len(chunks) < 2):
        result, q, stats = _attack_batch(
            model,
            attack,
            x[chunk],
            y[chunk],
            None if targets is None else targets[chunk],
            None if starting_points is None else starting_points[chunk],
        )
        x_adv[chunk] = result.x_adv.detach().cpu()
        claimed[chunk] = result.success.cpu()
        queries[chunk] = q
        for key, value in stats.items():
            oracle_stats[key] += value
        if result.trace is not None:
            for i, trace in zip(chunk.tolist(), result.trace, strict=True):
                traces[i] = trace.cpu()
        if result.epsilons is not None and result.x_adv_by_eps is not None:
            if not adv_by_eps:
                epsilons = list(result.epsilons)
                adv_by_eps = [x.clone().cpu() for _ in epsilons]
            for e, adv in enumerate(result.x_adv_by_eps):
                adv_by_eps[e][chunk] = adv.detach().cpu()

    # the fresh re-check: one forward pass of the model on everything the attack returned
    def recheck(adv: torch.Tensor) -> torch.Tensor:
        ok = is_adversarial(model.predict(adv, batch_size), y, targets)
        return ok & attacked

    success = recheck(x_adv)
    norm = getattr(attack, "norm", "l2")
    robust_by_eps: list[float] | None = None
    if attack.fixed_epsilon:
        eps_list = epsilons or [float(getattr(attack, "eps", math.inf))]
        advs = adv_by_eps or [x_adv]
        robust_by_eps = []
        for eps, adv in zip(eps_list, advs, strict=True):
            fooled = recheck(adv) & _inside_ball(x, adv, eps, norm)
            robust_by_eps.append(float((clean_correct & ~fooled).float().mean()))
        success &= _inside_ball(x, x_adv, eps_list[-1], norm)
        epsilons = eps_list
    flips = int((claimed & attacked & ~success).sum())

    dist = distances(x, x_adv)
    won = success & attacked
    metrics: dict[str, Any] = {
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
        "median_queries": _median(queries[attacked]),
        "mean_queries": _mean(queries[attacked]),
        "flips": flips,
    }
    if oracle_stats["calls"]:
        metrics["rows_per_call"] = oracle_stats["rows"] / oracle_stats["calls"]
    per_sample: dict[str, list[Any] | None] = {
        "label": y.tolist(),
        "target": None if targets is None else targets.tolist(),
        "clean_correct": clean_correct.tolist(),
        "attacked": attacked.tolist(),
        "claimed": claimed.tolist(),
        "success": success.tolist(),
        "queries": queries.tolist(),
        "l2": dist["l2"].tolist(),
        "linf": dist["linf"].tolist(),
        "mse": dist["mse"].tolist(),
    }
    return Evaluation(
        metrics=metrics,
        per_sample=per_sample,
        x=x,
        x_adv=x_adv,
        attacked=attacked,
        traces=[traces[i] for i in idx.tolist()],
        epsilons=epsilons,
        robust_by_eps=robust_by_eps,
        oracle_stats=oracle_stats,
    )

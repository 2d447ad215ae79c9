"""The query-efficiency rows: minimisation attacks' distortion and success within each query budget."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

from advsuite.leaderboard.records import RunView, evaluate_records
from advsuite.results.record import finite_number


class QueryRow(TypedDict):
    """One minimisation attack's budget metrics; the per-budget dicts are keyed by budget (text)."""

    dataset: str
    model: str
    defense: str
    attack: str
    targeted: bool
    norm: str
    n_attacked: int | None
    flips: int | None
    mse_threshold: float | None
    l2_threshold: float | None
    median_mse_at: dict[str, float | None]
    geomean_mse_at: dict[str, float | None]
    median_l2_at: dict[str, float | None]
    n_found_at: dict[str, int | None]
    success_rate_at: dict[str, float | None]
    success_rate_l2_at: dict[str, float | None]
    date: str | None
    run_id: str
    traces: str | None


def build_query_table(
    records: Iterable[Mapping[str, Any]],
    dataset: str | None = None,
    norm: str | None = None,
) -> list[QueryRow]:
    """The query-efficiency rows: finished evaluate records of minimisation attacks with budget metrics.

    One row per (dataset, model, defense, attack, targeted, norm); the latest record wins. Sorted by
    dataset, model, defense, targeted, norm, then attack. Records without ``metrics.median_mse_at``
    (white-box and fixed-epsilon attacks, and runs recorded before these metrics existed) are skipped.
    """
    latest: dict[tuple[str, str, str, bool, str, str], RunView] = {}
    for run in evaluate_records(records, dataset, norm):
        if run.metric_map("median_mse_at") is None or run.metric("robust_accuracy"):
            continue
        key = (run.dataset, run.model, run.defense, run.targeted, run.norm, run.attack)
        previous = latest.get(key)
        if previous is None or run.order >= previous.order:
            latest[key] = run
    rows = [_query_row(key, run) for key, run in latest.items()]
    return sorted(rows, key=lambda r: (r["dataset"], r["model"], r["defense"], r["targeted"], r["norm"], r["attack"]))


def _query_row(key: tuple[str, str, str, bool, str, str], run: RunView) -> QueryRow:
    dataset, model, defense, targeted, norm, attack = key

    def per_budget(name: str) -> dict[str, float | None]:
        return {str(b): finite_number(v) for b, v in (run.metric_map(name) or {}).items()}

    artifacts = run.record.get("artifacts") or {}
    traces = None
    if artifacts.get("traces") and run.record.get("run_dir"):
        traces = str(Path(str(run.record["run_dir"])) / str(artifacts["traces"]))
    n_attacked = run.metric("n_attacked")
    flips = run.metric("flips")
    return QueryRow(
        dataset=dataset,
        model=model,
        defense=defense,
        attack=attack,
        targeted=targeted,
        norm=norm,
        n_attacked=None if n_attacked is None else int(n_attacked),
        flips=None if flips is None else int(flips),
        mse_threshold=run.metric("mse_threshold"),
        l2_threshold=run.metric("l2_threshold"),
        median_mse_at=per_budget("median_mse_at"),
        geomean_mse_at=per_budget("geomean_mse_at"),
        median_l2_at=per_budget("median_l2_at"),
        n_found_at={b: None if v is None else int(v) for b, v in per_budget("n_found_at").items()},
        success_rate_at=per_budget("success_rate_at"),
        success_rate_l2_at=per_budget("success_rate_l2_at"),
        date=run.created[:10] or None,
        run_id=run.run_id,
        traces=traces,
    )


def query_budgets(rows: Sequence[QueryRow]) -> list[str]:
    """The budgets (as text keys) found in ``rows``, in increasing order."""
    keys = {b for row in rows for b in row["median_mse_at"]}
    return sorted(keys, key=lambda b: (finite_number(b) is None, finite_number(b) or 0.0, b))


def query_groups(rows: Sequence[QueryRow]) -> list[tuple[str, list[QueryRow]]]:
    """The query rows by (dataset, model, defense, targeted), each with a heading: the HTML page's tables."""
    groups: dict[tuple[str, str, str, bool], list[QueryRow]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["model"], row["defense"], row["targeted"]), []).append(row)
    return [
        (f"{d} · {m} · defense {f} · {'targeted' if t else 'untargeted'}", members)
        for (d, m, f, t), members in groups.items()
    ]

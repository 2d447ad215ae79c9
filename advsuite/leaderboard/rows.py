"""The ranking rows: one per (model, defense, dataset, norm, epsilon), worst case first."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypedDict

from advsuite.leaderboard.records import RunView, _Entry, eps_key, evaluate_records
from advsuite.results.record import finite_number


class LeaderboardRow(TypedDict):
    """One row; the per-attack dicts are keyed by attack name."""

    rank: int | None
    model: str
    defense: str
    dataset: str
    norm: str
    epsilon: float | None
    clean_accuracy: float | None
    worst_case: float | None
    worst_attack: str | None
    robust_accuracy: dict[str, float]
    success_rate: dict[str, float | None]
    median_l2: dict[str, float | None]
    queries: dict[str, float]
    #: the attacks' own leaderboard metrics, metric -> attack -> value, and their column titles
    extra: dict[str, dict[str, float | None]]
    extra_titles: dict[str, str]
    #: the latest audit's flags ("no flag" or "unreliable: <checks>") and its HTML report; None without an audit
    audit: str | None
    audit_report: str | None
    n_examples: int | None
    date: str | None
    versions: str
    run_ids: list[str]


def build_leaderboard(
    records: Iterable[Mapping[str, Any]],
    dataset: str | None = None,
    norm: str | None = None,
    epsilon: float | None = None,
) -> list[LeaderboardRow]:
    """Group finished evaluate records into ranked rows; the filters keep matching rows only."""
    groups: dict[tuple[str, str, str, str, float | None], dict[str, _Entry]] = {}
    for run in evaluate_records(records, dataset, norm):
        for eps, entry in _entries(run):
            if epsilon is not None and (eps is None or not math.isclose(eps, epsilon, rel_tol=1e-6)):
                continue
            key = (run.model, run.defense, run.dataset, run.norm, eps)
            by_attack = groups.setdefault(key, {})
            previous = by_attack.get(entry.attack)
            if previous is None or entry.run.order >= previous.run.order:
                by_attack[entry.attack] = entry
    rows = [_make_row(key, entries) for key, entries in groups.items()]
    return _rank(rows)


def _entries(run: RunView) -> list[tuple[float | None, _Entry]]:
    at_eps: dict[float | None, float] = {}
    for eps_text, acc in (run.metric_map("robust_accuracy_by_eps") or {}).items():
        eps, value = finite_number(eps_text), finite_number(acc)
        if eps is not None and value is not None:
            at_eps[eps_key(eps)] = value
    eps = run.epsilon
    robust = run.metric("robust_accuracy")
    if robust is not None:
        at_eps[None if eps is None else eps_key(eps)] = robust
    if not at_eps:  # a minimisation attack: one entry, at its epsilon (usually none)
        return [(None if eps is None else eps_key(eps), _Entry(run.attack, None, run))]
    return [(key, _Entry(run.attack, value, run)) for key, value in at_eps.items()]


def _make_row(key: tuple[str, str, str, str, float | None], entries: dict[str, _Entry]) -> LeaderboardRow:
    model, defense, dataset, norm, eps = key
    robust = {a: e.robust_accuracy for a, e in sorted(entries.items()) if e.robust_accuracy is not None}
    minimising = {a: e for a, e in sorted(entries.items()) if e.robust_accuracy is None}
    worst_attack = min(robust, key=lambda a: (robust[a], a)) if robust else None
    latest = max((e.run for e in entries.values()), key=lambda run: run.order)
    queries: dict[str, float] = {}
    for attack, entry in sorted(entries.items()):
        median = entry.run.metric("median_queries")
        if median is not None and entry.run.access in ("score", "label"):
            queries[attack] = median
    declared = {a: e.run.metric_titles for a, e in sorted(entries.items())}
    titles: dict[str, str] = {}
    for own in declared.values():
        for metric, title in own.items():
            titles.setdefault(metric, title)
    audits = [e.run for e in entries.values() if e.run.is_audit]
    audit = max(audits, key=lambda run: run.order) if audits else None
    counts = [e.run.metric("n_examples") for e in entries.values()]
    known = [n for n in counts if n is not None]
    return LeaderboardRow(
        rank=None,
        model=model,
        defense=defense,
        dataset=dataset,
        norm=norm,
        epsilon=eps,
        clean_accuracy=latest.metric("clean_accuracy"),
        worst_case=robust[worst_attack] if worst_attack is not None else None,
        worst_attack=worst_attack,
        robust_accuracy=robust,
        success_rate={a: e.run.metric("success_rate") for a, e in minimising.items()},
        median_l2={a: e.run.metric("median_l2") for a, e in minimising.items()},
        queries=queries,
        extra={
            m: {a: v for a, e in sorted(entries.items()) if m in declared[a] and (v := e.run.metric(m)) is not None}
            for m in titles
        },
        extra_titles=titles,
        audit=None if audit is None else _audit_verdict(audit),
        audit_report=None if audit is None else audit.artifact("report_html") or audit.artifact("report"),
        # the smallest sample behind any number in the row: the row is only as solid as that
        n_examples=int(min(known)) if known else None,
        date=latest.created[:10] or None,
        versions="; ".join(sorted({e.run.versions for e in entries.values()} - {""})),
        run_ids=sorted(e.run.run_id for e in entries.values()),
    )


def _audit_verdict(run: RunView) -> str:
    """RobustBench's "potentially unreliable" mark, with the checks that flagged."""
    flags = (run.record.get("metrics") or {}).get("flags") or []
    return "unreliable: " + ", ".join(str(f) for f in flags) if flags else "no flag"


def _rank(rows: list[LeaderboardRow]) -> list[LeaderboardRow]:
    def block(row: LeaderboardRow) -> tuple[str, str, bool, float]:
        eps = row["epsilon"]
        return (row["dataset"], row["norm"], eps is None, eps if eps is not None else 0.0)

    def order(row: LeaderboardRow) -> tuple[Any, ...]:
        worst, clean = row["worst_case"], row["clean_accuracy"]
        return (
            *block(row),
            worst is None,
            -(worst or 0.0),
            -(clean if clean is not None else -1.0),
            row["model"],
            row["defense"],
        )

    rows = sorted(rows, key=order)
    rank, current = 0, None
    for row in rows:
        if block(row) != current:
            rank, current = 0, block(row)
        if row["worst_case"] is not None:
            rank += 1
            row["rank"] = rank
    return rows


def blocks(rows: Sequence[LeaderboardRow]) -> list[tuple[str, list[LeaderboardRow]]]:
    """The ranked rows split into their (dataset, norm, epsilon) blocks, each with a heading."""
    out: list[tuple[str, list[LeaderboardRow]]] = []
    current: tuple[str, str, float | None] | None = None
    for row in rows:
        key = (row["dataset"], row["norm"], row["epsilon"])
        if key != current:
            eps = "no fixed ε (minimisation attacks)" if key[2] is None else f"ε = {key[2]:.6g}"
            out.append((f"{key[0]} · {key[1]} · {eps}", []))
            current = key
        out[-1][1].append(row)
    return out


class DetailRow(TypedDict):
    """One attack's numbers in one ranking row (the HTML page's per-block detail table)."""

    model: str
    defense: str
    attack: str
    robust_accuracy: float | None
    success_rate: float | None
    median_l2: float | None
    queries: float | None
    extra: dict[str, float | None]
    extra_titles: dict[str, str]


def attack_details(rows: Sequence[LeaderboardRow]) -> list[DetailRow]:
    """Long format of a block: one row per (model, defense, attack), with the attack-specific metrics."""
    out = []
    for row in rows:
        attacks = sorted(
            {*row["robust_accuracy"], *row["success_rate"], *(a for m in row["extra"].values() for a in m)}
        )
        for a in attacks:
            out.append(
                DetailRow(
                    model=row["model"],
                    defense=row["defense"],
                    attack=a,
                    robust_accuracy=row["robust_accuracy"].get(a),
                    success_rate=row["success_rate"].get(a),
                    median_l2=row["median_l2"].get(a),
                    queries=row["queries"].get(a),
                    extra={m: values[a] for m, values in row["extra"].items() if a in values},
                    extra_titles=row["extra_titles"],
                )
            )
    return out

"""Leaderboards: rank models and defenses by worst-case robust accuracy over the attacks run.

One row per (model, defense, dataset, threat model, epsilon), RobustBench style: clean accuracy,
robust accuracy for each attack, and the worst case (the minimum over attacks), ranked most robust
first within each (dataset, threat model, epsilon) block.

Rules (also in docs/results.md):

- Only finished ``evaluate`` records count. For each attack in a row, the latest record wins.
- A record gives a robust accuracy at ``names.epsilon`` (``metrics.robust_accuracy``) and at every
  epsilon in ``metrics.robust_accuracy_by_eps``; each epsilon is its own row.
- Minimisation attacks (decision-based: they report distances, not accuracy at a fixed epsilon) have
  ``robust_accuracy = null``. Unless ``robust_accuracy_by_eps`` places them at some epsilon, they
  show up in their own columns (success rate and median L2) and are left out of the worst case,
  because a success rate at unbounded distance says nothing about robustness at epsilon.
- The worst case is the minimum of the per-attack accuracies. It is an upper bound on the
  per-sample ensemble accuracy (a sample counts as robust only if every attack fails on it).

A second table, *query efficiency*, lists minimisation attacks whose records hold budget metrics
(``metrics.median_mse_at``, written for attacks that return traces): one row per (dataset, model,
defense, attack, targeted, norm), latest record wins, with median MSE and L2 and the success rate
at the record's MSE threshold after each query budget. :func:`write_query_plots` draws, per
(dataset, model, defense, targeted), one distortion-vs-queries figure with every attack's curve.
"""

from __future__ import annotations

import csv
import html
import io
import math
import os
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypedDict

from advsuite.errors import ConfigError
from advsuite.results.record import atomic_write_text, finite_number

FORMATS = ("md", "html", "csv")
NOTE = (
    "Worst case = minimum robust accuracy over the attacks run at this epsilon; ranked by it, most robust "
    "first, within each (dataset, threat model, epsilon). Minimisation attacks without a robust accuracy at "
    "epsilon are shown by success rate and median L2 and left out of the worst case. Queries = median queries "
    "of black-box attacks."
)
QUERY_TITLE = "Query efficiency (decision-based attacks)"
QUERY_NOTE = (
    "Median per-pixel MSE (L2²/(C·H·W)) and L2 of the best adversarial found within each query budget, over the "
    "attacked images (an image with no adversarial yet counts as infinitely far; a median that depends on one is "
    "shown as –), and the success rate: the fraction of attacked images with MSE ≤ the threshold within the budget. "
    "– at a budget the run did not reach. Lower distortion and higher success are better."
)
_MISSING = "–"
#: attack-specific metrics (``Attack.extra_metrics``) that get a column per attack when a record has them
EXTRA_METRICS: dict[str, str] = {
    "fooling_rate": "fooling rate",
    "transfer_fooling_rate": "transfer fooling rate",
    "patch_success": "patch success",
    "adapted_success": "adapted-model success",
    "evasive_success": "evasive success",
    "restored_exact": "bit-exact restores",
}


class LeaderboardRow(TypedDict):
    """One row; the per-attack dicts are keyed by attack name."""

    rank: int | None
    model: str
    defense: str
    dataset: str
    threat_model: str
    epsilon: float | None
    clean_accuracy: float | None
    worst_case: float | None
    worst_attack: str | None
    robust_accuracy: dict[str, float]
    success_rate: dict[str, float | None]
    median_l2: dict[str, float | None]
    queries: dict[str, float]
    #: attack-specific metrics (:data:`EXTRA_METRICS`), metric -> attack -> value
    extra: dict[str, dict[str, float | None]]
    n_examples: int | None
    date: str | None
    versions: str
    run_ids: list[str]


@dataclass(frozen=True)
class _Entry:
    """One attack's result at one epsilon, taken from one record."""

    attack: str
    robust_accuracy: float | None
    record: Mapping[str, Any]

    @property
    def created(self) -> str:
        return str(self.record.get("created") or "")

    @property
    def order(self) -> tuple[float, str]:
        """Sort key for "latest": the parsed time (UTC offsets differ between machines), then the text."""
        try:
            stamp = datetime.fromisoformat(self.created.replace("Z", "+00:00"))
        except ValueError:
            return (-math.inf, self.created)
        return (stamp.timestamp(), self.created)  # a naive time counts as local time


def build_leaderboard(
    records: Iterable[Mapping[str, Any]],
    dataset: str | None = None,
    threat_model: str | None = None,
    epsilon: float | None = None,
) -> list[LeaderboardRow]:
    """Group finished evaluate records into ranked rows; the filters keep matching rows only."""
    groups: dict[tuple[str, str, str, str, float | None], dict[str, _Entry]] = {}
    for record in records:
        names = record.get("names") or {}
        if record.get("status") != "finished" or names.get("task", "evaluate") != "evaluate":
            continue
        if dataset is not None and names.get("dataset") != dataset:
            continue
        if threat_model is not None and names.get("threat_model") != threat_model:
            continue
        for eps, entry in _entries(record):
            if epsilon is not None and (eps is None or not math.isclose(eps, epsilon, rel_tol=1e-6)):
                continue
            key = (
                _model_key(names),
                str(names.get("defense") or "none"),
                str(names.get("dataset")),
                str(names.get("threat_model")),
                eps,
            )
            by_attack = groups.setdefault(key, {})
            previous = by_attack.get(entry.attack)
            if previous is None or entry.order >= previous.order:
                by_attack[entry.attack] = entry
    rows = [_make_row(key, entries) for key, entries in groups.items()]
    return _rank(rows)


def _entries(record: Mapping[str, Any]) -> list[tuple[float | None, _Entry]]:
    names = record.get("names") or {}
    metrics = record.get("metrics") or {}
    attack = str(names.get("attack"))
    at_eps: dict[float | None, float] = {}
    for eps_text, acc in (metrics.get("robust_accuracy_by_eps") or {}).items():
        eps, value = finite_number(eps_text), finite_number(acc)
        if eps is not None and value is not None:
            at_eps[_eps_key(eps)] = value
    eps = finite_number(names.get("epsilon"))
    robust = finite_number(metrics.get("robust_accuracy"))
    if robust is not None:
        at_eps[None if eps is None else _eps_key(eps)] = robust
    if not at_eps:  # a minimisation attack: one entry, at its epsilon (usually none)
        return [(None if eps is None else _eps_key(eps), _Entry(attack, None, record))]
    return [(key, _Entry(attack, value, record)) for key, value in at_eps.items()]


def _make_row(key: tuple[str, str, str, str, float | None], entries: dict[str, _Entry]) -> LeaderboardRow:
    model, defense, dataset, threat_model, eps = key
    robust = {a: e.robust_accuracy for a, e in sorted(entries.items()) if e.robust_accuracy is not None}
    minimising = {a: e for a, e in sorted(entries.items()) if e.robust_accuracy is None}
    worst_attack = min(robust, key=lambda a: (robust[a], a)) if robust else None
    latest = max(entries.values(), key=lambda e: e.order)
    queries: dict[str, float] = {}
    for attack, entry in sorted(entries.items()):
        median = _metric(entry.record, "median_queries")
        if median is not None and (entry.record.get("names") or {}).get("access") in ("score", "label"):
            queries[attack] = median
    counts = [_metric(e.record, "n_examples") for e in entries.values()]
    known = [n for n in counts if n is not None]
    return LeaderboardRow(
        rank=None,
        model=model,
        defense=defense,
        dataset=dataset,
        threat_model=threat_model,
        epsilon=eps,
        clean_accuracy=_metric(latest.record, "clean_accuracy"),
        worst_case=robust[worst_attack] if worst_attack is not None else None,
        worst_attack=worst_attack,
        robust_accuracy=robust,
        success_rate={a: _metric(e.record, "success_rate") for a, e in minimising.items()},
        median_l2={a: _metric(e.record, "median_l2") for a, e in minimising.items()},
        queries=queries,
        extra={
            m: {a: _metric(e.record, m) for a, e in sorted(entries.items()) if _metric(e.record, m) is not None}
            for m in EXTRA_METRICS
        },
        # the smallest sample behind any number in the row: the row is only as solid as that
        n_examples=int(min(known)) if known else None,
        date=latest.created[:10] or None,
        versions="; ".join(sorted({_versions(e.record) for e in entries.values()} - {""})),
        run_ids=sorted(str(e.record.get("run_id")) for e in entries.values()),
    )


def _rank(rows: list[LeaderboardRow]) -> list[LeaderboardRow]:
    def block(row: LeaderboardRow) -> tuple[str, str, bool, float]:
        eps = row["epsilon"]
        return (row["dataset"], row["threat_model"], eps is None, eps if eps is not None else 0.0)

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
    threat_model: str | None = None,
) -> list[QueryRow]:
    """The query-efficiency rows: finished evaluate records of minimisation attacks with budget metrics.

    One row per (dataset, model, defense, attack, targeted, norm); the latest record wins. Sorted by
    dataset, model, defense, targeted, norm, then attack. Records without ``metrics.median_mse_at``
    (white-box and fixed-epsilon attacks, and runs recorded before these metrics existed) are skipped.
    """
    latest: dict[tuple[str, str, str, bool, str, str], _Entry] = {}
    for record in records:
        names = record.get("names") or {}
        metrics = record.get("metrics") or {}
        if record.get("status") != "finished" or names.get("task", "evaluate") != "evaluate":
            continue
        if dataset is not None and names.get("dataset") != dataset:
            continue
        if threat_model is not None and names.get("threat_model") != threat_model:
            continue
        if not isinstance(metrics.get("median_mse_at"), Mapping) or finite_number(metrics.get("robust_accuracy")):
            continue
        key = (
            str(names.get("dataset")),
            _model_key(names),
            str(names.get("defense") or "none"),
            _targeted(record),
            str(names.get("threat_model")),
            str(names.get("attack")),
        )
        entry = _Entry(key[-1], None, record)
        previous = latest.get(key)
        if previous is None or entry.order >= previous.order:
            latest[key] = entry
    rows = [_query_row(key, entry) for key, entry in latest.items()]
    return sorted(rows, key=lambda r: (r["dataset"], r["model"], r["defense"], r["targeted"], r["norm"], r["attack"]))


def _query_row(key: tuple[str, str, str, bool, str, str], entry: _Entry) -> QueryRow:
    dataset, model, defense, targeted, norm, attack = key
    record = entry.record
    metrics = record.get("metrics") or {}

    def per_budget(name: str) -> dict[str, float | None]:
        values = metrics.get(name)
        if not isinstance(values, Mapping):
            return {}
        return {str(b): finite_number(v) for b, v in values.items()}

    artifacts = record.get("artifacts") or {}
    traces = None
    if artifacts.get("traces") and record.get("run_dir"):
        traces = str(Path(str(record["run_dir"])) / str(artifacts["traces"]))
    n_attacked = _metric(record, "n_attacked")
    flips = _metric(record, "flips")
    return QueryRow(
        dataset=dataset,
        model=model,
        defense=defense,
        attack=attack,
        targeted=targeted,
        norm=norm,
        n_attacked=None if n_attacked is None else int(n_attacked),
        flips=None if flips is None else int(flips),
        mse_threshold=_metric(record, "mse_threshold"),
        l2_threshold=_metric(record, "l2_threshold"),
        median_mse_at=per_budget("median_mse_at"),
        geomean_mse_at=per_budget("geomean_mse_at"),
        median_l2_at=per_budget("median_l2_at"),
        n_found_at={b: None if v is None else int(v) for b, v in per_budget("n_found_at").items()},
        success_rate_at=per_budget("success_rate_at"),
        success_rate_l2_at=per_budget("success_rate_l2_at"),
        date=entry.created[:10] or None,
        run_id=str(record.get("run_id")),
        traces=traces,
    )


def _targeted(record: Mapping[str, Any]) -> bool:
    """Whether the run was targeted: ``names.targeted``, else the config's ``attack.targeted`` (default no)."""
    value = (record.get("names") or {}).get("targeted")
    if value is None:
        value = ((record.get("config") or {}).get("attack") or {}).get("targeted")
    return bool(value)


# -- rendering ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Column:
    key: str  # CSV header
    title: str  # Markdown/HTML header
    get: Callable[[Any], Any]  # row -> value (a LeaderboardRow or a QueryRow)
    kind: str  # how to format: acc, eps, dist, count, queries, yesno, text
    numeric: bool = True


# columns the tables share (flat, HTML ranking and detail, query)
_RANK = _Column("rank", "Rank", lambda r: r["rank"], "count")
_MODEL = _Column("model", "Model", lambda r: r["model"], "text", False)
_DEFENSE = _Column("defense", "Defense", lambda r: r["defense"], "text", False)
_ATTACK = _Column("attack", "Attack", lambda r: r["attack"], "text", False)
_CLEAN = _Column("clean_accuracy", "Clean acc.", lambda r: r["clean_accuracy"], "acc")
_WORST = _Column("worst_case_robust_accuracy", "Worst-case robust acc.", lambda r: r["worst_case"], "acc")
_WORST_ATTACK = _Column("worst_attack", "Worst attack", lambda r: r["worst_attack"], "text", False)
_N = _Column("n_examples", "n", lambda r: r["n_examples"], "count")
_DATE = _Column("date", "Date", lambda r: r["date"], "text", False)


def columns(rows: Sequence[LeaderboardRow]) -> list[_Column]:
    """The flat table's columns (Markdown, CSV): fixed ones plus one per attack and metric found in ``rows``."""
    robust = sorted({a for row in rows for a in row["robust_accuracy"]})
    minimising = sorted({a for row in rows for a in row["success_rate"]})
    cols = [
        _RANK,
        _MODEL,
        _DEFENSE,
        _Column("dataset", "Dataset", lambda r: r["dataset"], "text", False),
        _Column("threat_model", "Threat model", lambda r: r["threat_model"], "text", False),
        _Column("epsilon", "Epsilon", lambda r: r["epsilon"], "eps"),
        _CLEAN,
        _WORST,
        _WORST_ATTACK,
    ]
    for a in robust:
        cols.append(_Column(f"robust_accuracy:{a}", f"{a} robust acc.", _getter("robust_accuracy", a), "acc"))
    for a in minimising:
        cols.append(_Column(f"success_rate:{a}", f"{a} success rate", _getter("success_rate", a), "acc"))
        cols.append(_Column(f"median_l2:{a}", f"{a} median L2", _getter("median_l2", a), "dist"))
    for metric, title in EXTRA_METRICS.items():
        for a in sorted({a for row in rows for a in row["extra"].get(metric, {})}):
            # "patch success" for attack patch, not "patch patch success"
            header = title if title.split()[0] == a else f"{a} {title}"
            cols.append(_Column(f"{metric}:{a}", header, _extra_getter(metric, a), "acc"))
    cols += [
        _N,
        _Column("median_queries", "Queries", lambda r: r["queries"], "queries", False),
        _DATE,
        _Column("versions", "Versions", lambda r: r["versions"], "text", False),
    ]
    return cols


def blocks(rows: Sequence[LeaderboardRow]) -> list[tuple[str, list[LeaderboardRow]]]:
    """The ranked rows split into their (dataset, threat model, epsilon) blocks, each with a heading."""
    out: list[tuple[str, list[LeaderboardRow]]] = []
    current: tuple[str, str, float | None] | None = None
    for row in rows:
        key = (row["dataset"], row["threat_model"], row["epsilon"])
        if key != current:
            eps = "no fixed ε (minimisation attacks)" if key[2] is None else f"ε = {_format(key[2], 'eps')}"
            out.append((f"{key[0]} · {key[1]} · {eps}", []))
            current = key
        out[-1][1].append(row)
    return out


def ranking_columns(rows: Sequence[LeaderboardRow]) -> list[_Column]:
    """One block's ranking table (HTML): the block's heading names dataset, threat model and epsilon, and
    each attack gets one column, its robust accuracy, only when it ran in this block."""
    robust = sorted({a for row in rows for a in row["robust_accuracy"]})
    per_attack = [_Column(f"robust_accuracy:{a}", a, _getter("robust_accuracy", a), "acc") for a in robust]
    return [_RANK, _MODEL, _DEFENSE, _CLEAN, _WORST, _WORST_ATTACK, *per_attack, _N, _DATE]


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
                )
            )
    return out


def detail_columns(details: Sequence[DetailRow]) -> list[_Column]:
    """The detail table's columns: the standard ones, then one per attack-specific metric present."""
    cols = [
        _MODEL,
        _DEFENSE,
        _ATTACK,
        _Column("robust_accuracy", "Robust acc.", lambda r: r["robust_accuracy"], "acc"),
        _Column("success_rate", "Success rate", lambda r: r["success_rate"], "acc"),
        _Column("median_l2", "Median L2", lambda r: r["median_l2"], "dist"),
        _Column("median_queries", "Median queries", lambda r: r["queries"], "count"),
    ]
    present = {m for d in details for m in d["extra"]}
    cols += [
        _Column(m, title, (lambda key: lambda r: r["extra"].get(key))(m), "acc")
        for m, title in EXTRA_METRICS.items()
        if m in present
    ]
    return cols


def _getter(field: str, attack: str) -> Callable[[Any], Any]:
    return lambda row: row[field].get(attack)


def _extra_getter(metric: str, attack: str) -> Callable[[Any], Any]:
    return lambda row: row["extra"].get(metric, {}).get(attack)


def query_budgets(rows: Sequence[QueryRow]) -> list[str]:
    """The budgets (as text keys) found in ``rows``, in increasing order."""
    keys = {b for row in rows for b in row["median_mse_at"]}
    return sorted(keys, key=lambda b: (finite_number(b) is None, finite_number(b) or 0.0, b))


def query_columns(rows: Sequence[QueryRow], *, full: bool = False, grouped: bool = False) -> list[_Column]:
    """Columns of the query table; ``full`` (the CSV) adds geometric means, counts and the run id;
    ``grouped`` (the HTML page, one table per :func:`query_groups` heading) leaves out what the heading names."""
    budgets = query_budgets(rows)
    with_l2 = any(v is not None for row in rows for v in row["success_rate_l2_at"].values())
    dataset = _Column("dataset", "Dataset", lambda r: r["dataset"], "text", False)
    targeted = _Column("targeted", "Targeted", lambda r: r["targeted"], "yesno", False)
    cols = [_ATTACK] if grouped else [dataset, _MODEL, _DEFENSE, _ATTACK, targeted]
    cols += [
        _Column("norm", "Norm", lambda r: r["norm"], "text", False),
        _Column("n_attacked", "n", lambda r: r["n_attacked"], "count"),
        # claimed successes the fresh re-check rejected (points within ~1e-6 of the boundary)
        _Column("flips", "Flips", lambda r: r["flips"], "count"),
        _Column("mse_threshold", "MSE thr.", lambda r: r["mse_threshold"], "dist"),
    ]
    if with_l2:
        cols.append(_Column("l2_threshold", "L2 thr.", lambda r: r["l2_threshold"], "dist"))
    blocks = [("median_mse_at", "median MSE", "dist"), ("median_l2_at", "median L2", "dist")]
    if full:
        blocks += [("geomean_mse_at", "geomean MSE", "dist"), ("n_found_at", "found", "count")]
    blocks.append(("success_rate_at", "success", "acc"))
    if with_l2:
        blocks.append(("success_rate_l2_at", "success L2", "acc"))
    for field, title, kind in blocks:
        for b in budgets:
            cols.append(_Column(f"{field}:{b}", f"{title} @{_budget_label(b)}", _getter(field, b), kind))
    cols.append(_Column("date", "Date", lambda r: r["date"], "text", False))
    if full:
        cols.append(_Column("run_id", "Run", lambda r: r["run_id"], "text", False))
    return cols


def query_groups(rows: Sequence[QueryRow]) -> list[tuple[str, list[QueryRow]]]:
    """The query rows by (dataset, model, defense, targeted), each with a heading: the HTML page's tables."""
    groups: dict[tuple[str, str, str, bool], list[QueryRow]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["model"], row["defense"], row["targeted"]), []).append(row)
    return [
        (f"{d} · {m} · defense {f} · {'targeted' if t else 'untargeted'}", members)
        for (d, m, f, t), members in groups.items()
    ]


def _budget_label(budget: str) -> str:
    value = finite_number(budget)
    if value is None:
        return budget
    return f"{value / 1000:g}k" if value >= 1000 else f"{value:g}"


def _format(value: Any, kind: str) -> str:
    """Human formatting: accuracies in percent, like RobustBench."""
    if value is None or value == {} or value == "":
        return _MISSING
    if kind == "acc":
        return f"{100 * value:.2f}%"
    if kind == "eps":
        return f"{value:.6g}"
    if kind == "dist":
        return f"{value:.4g}"
    if kind == "yesno":
        return "yes" if value else "no"
    if kind == "count":
        return f"{value:g}" if isinstance(value, float) else str(value)
    if kind == "queries":
        return ", ".join(f"{a}: {q:.6g}" for a, q in value.items())
    return str(value)


def _raw(value: Any, kind: str) -> str:
    """Machine formatting for CSV: full precision, fractions not percents, empty for missing."""
    if value is None:
        return ""
    if kind == "queries":
        return ";".join(f"{a}={q!r}" for a, q in value.items())
    return repr(value) if isinstance(value, float) else str(value)


def render_markdown(rows: Sequence[LeaderboardRow]) -> str:
    """A GitHub-flavoured Markdown table (numbers right-aligned)."""
    return _markdown_table(columns(rows), rows)


def render_query_markdown(rows: Sequence[QueryRow]) -> str:
    """The query-efficiency table in Markdown."""
    return _markdown_table(query_columns(rows), rows)


def _markdown_table(cols: Sequence[_Column], rows: Sequence[Any]) -> str:
    lines = [
        "| " + " | ".join(_md_escape(c.title) for c in cols) + " |",
        "|" + "|".join("---:" if c.numeric else "---" for c in cols) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_md_escape(_format(c.get(row), c.kind)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _md_escape(text: str) -> str:
    # a pipe would end the cell, a newline the row
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; max-width: 1400px; }
h2 { font-size: 1.1em; margin: 1.6em 0 0.4em; }
h3 { font-size: 1em; margin: 1.2em 0 0.4em; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; }
th { background: #f3f3f3; position: sticky; top: 0; z-index: 1; cursor: pointer; vertical-align: bottom;
     max-width: 8em; }
th[aria-sort="ascending"]::after { content: " ▲"; }
th[aria-sort="descending"]::after { content: " ▼"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.txt { white-space: nowrap; }
details { margin: 0.6em 0; } summary { cursor: pointer; color: #333; font-size: 0.9em; }
p.note { color: #555; font-size: 0.85em; max-width: 60em; }
"""
# Click a header to sort by it (again to reverse); cells carry their raw value, missing ones sort last.
_SORT_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  var heads = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th, col) {
    th.addEventListener("click", function () {
      var up = th.getAttribute("aria-sort") !== "ascending";
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", up ? "ascending" : "descending");
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.value, y = b.cells[col].dataset.value;
        if (x === "" || y === "") { return (x === "") - (y === ""); }
        var nx = Number(x), ny = Number(y);
        var order = isNaN(nx) || isNaN(ny) ? x.localeCompare(y) : nx - ny;
        return up ? order : -order;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def render_html(
    rows: Sequence[LeaderboardRow], title: str = "advsuite leaderboard", query_rows: Sequence[QueryRow] = ()
) -> str:
    """A standalone HTML page: one sortable table per (dataset, threat model, epsilon) block under its own
    heading, each with only the attacks run there, then the query table when ``query_rows``; escaped,
    no external files."""
    parts = []
    for heading, block in blocks(rows) or [("no results", [])]:
        parts.append(f"<h2>{html.escape(heading)}</h2>\n" + _html_table(ranking_columns(block), block))
        details = attack_details(block)
        if any(d["robust_accuracy"] is None or d["queries"] is not None or d["extra"] for d in details):
            parts.append(
                f"<details open><summary>Each attack in {html.escape(heading)}</summary>\n"
                + _html_table(detail_columns(details), details)
                + "</details>\n"
            )
        versions = sorted({row["versions"] for row in block} - {""})
        if versions:
            parts.append(f'<p class="note">Versions: {html.escape("; ".join(versions))}</p>\n')
    parts.append(f'<p class="note">{html.escape(NOTE)}</p>\n')
    if query_rows:
        parts.append(f"<h2>{html.escape(QUERY_TITLE)}</h2>\n")
        for heading, group in query_groups(query_rows):
            parts.append(f"<h3>{html.escape(heading)}</h3>\n" + _html_table(query_columns(group, grouped=True), group))
        parts.append(f'<p class="note">{html.escape(QUERY_NOTE)}</p>\n')
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n"
        f"<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n" + "".join(parts) + f"<script>{_SORT_SCRIPT}</script>\n"
        "</body>\n</html>\n"
    )


def _html_table(cols: Sequence[_Column], rows: Sequence[Any]) -> str:
    # long attack names may break after an underscore, nowhere else
    head = "".join(
        f'<th scope="col" title="{html.escape(c.key)}">{html.escape(c.title).replace("_", "_<wbr>")}</th>' for c in cols
    )
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="{"num" if c.numeric else "txt"}" data-value="{html.escape(_raw(c.get(row), c.kind))}">'
            f"{html.escape(_format(c.get(row), c.kind))}</td>"
            for c in cols
        )
        body.append(f"<tr>{cells}</tr>")
    return (
        f'<table class="sortable">\n<thead><tr>{head}</tr></thead>\n<tbody>\n'
        + "\n".join(body)
        + "\n</tbody>\n</table>\n"
    )


def render_csv(rows: Sequence[LeaderboardRow]) -> str:
    """CSV with machine-friendly headers and raw values (accuracies as fractions)."""
    return _csv_table(columns(rows), rows)


def render_query_csv(rows: Sequence[QueryRow]) -> str:
    """The query table as CSV (``<field>:<budget>`` headers, fractions, full precision, empty = missing)."""
    return _csv_table(query_columns(rows, full=True), rows)


def _csv_table(cols: Sequence[_Column], rows: Sequence[Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([c.key for c in cols])
    for row in rows:
        writer.writerow([_raw(c.get(row), c.kind) for c in cols])
    return out.getvalue()


def write_leaderboard(
    rows: Sequence[LeaderboardRow],
    out_dir: str | os.PathLike[str],
    formats: Iterable[str] = FORMATS,
    stem: str = "leaderboard",
    query_rows: Sequence[QueryRow] = (),
) -> dict[str, Path]:
    """Write ``<out_dir>/<stem>.<fmt>`` for each format (atomically); returns ``{fmt: path}``.

    With ``query_rows``, the Markdown and HTML files get the query-efficiency table below the main
    one, and the CSV format writes it to ``<stem>_queries.csv`` too (key ``csv_queries``).
    """
    formats = list(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ConfigError(f"unknown leaderboard format(s) {unknown}; valid formats: {', '.join(FORMATS)}")

    def markdown() -> str:
        text = render_markdown(rows) + "\n" + NOTE + "\n"
        if query_rows:
            text += f"\n## {QUERY_TITLE}\n\n" + render_query_markdown(query_rows) + "\n" + QUERY_NOTE + "\n"
        return text

    renderers: dict[str, Callable[[], str]] = {
        "md": markdown,
        "html": lambda: render_html(rows, query_rows=query_rows),
        "csv": lambda: render_csv(rows),
    }
    out = Path(out_dir)
    written = {fmt: atomic_write_text(out / f"{stem}.{fmt}", renderers[fmt]()) for fmt in formats}
    if query_rows and "csv" in formats:
        written["csv_queries"] = atomic_write_text(out / f"{stem}_queries.csv", render_query_csv(query_rows))
    return written


def write_query_plots(
    query_rows: Sequence[QueryRow], out_dir: str | os.PathLike[str], stem: str = "leaderboard"
) -> list[Path]:
    """One distortion-vs-queries figure per (dataset, model, defense, targeted) with every attack in it.

    Median per-pixel MSE (line) and interquartile band over the attacked images, log scale, from the
    runs' traces artifacts; written as ``<out_dir>/<stem>_queries_<dataset>_<model>_<defense>_<targeted|
    untargeted>.png``. Rows whose traces are missing (older runs, deleted directories) are skipped with a
    warning; a group with no traces left gets no figure. Returns the paths written.
    """
    from advsuite.plots import plot_distortion_vs_queries
    from advsuite.results.traces import read_traces

    groups: dict[tuple[str, str, str, bool], list[QueryRow]] = {}
    for row in query_rows:
        groups.setdefault((row["dataset"], row["model"], row["defense"], row["targeted"]), []).append(row)
    written = []
    for (dataset, model, defense, targeted), rows in groups.items():
        curves: dict[str, Any] = {}
        n_dims: int | None = None
        for row in rows:
            if row["traces"] is None:
                continue
            try:
                artifact = read_traces(row["traces"])
            except (OSError, ValueError) as err:  # InputError is a ValueError
                warnings.warn(
                    f"no curve for {row['attack']} (run {row['run_id']}): {err}", RuntimeWarning, stacklevel=2
                )
                continue
            if artifact.n_dims is None or (n_dims is not None and artifact.n_dims != n_dims):
                warnings.warn(
                    f"no curve for {row['attack']} (run {row['run_id']}): its traces give no image size or another "
                    f"one ({artifact.n_dims} vs {n_dims})",
                    RuntimeWarning,
                    stacklevel=2,
                )
                continue
            n_dims = artifact.n_dims
            label = row["attack"] if row["norm"] in ("l2", "None") else f"{row['attack']} ({row['norm']})"
            curves[label] = artifact.traces
        if not curves:
            continue
        thresholds = {row["mse_threshold"] for row in rows}
        kind = "targeted" if targeted else "untargeted"
        name = _file_part("_".join([stem, "queries", dataset, model, defense, kind]))
        written.append(
            plot_distortion_vs_queries(
                curves,
                Path(out_dir) / f"{name}.png",
                metric="mse",
                n_dims=n_dims,
                title=f"{dataset} / {model} / {defense} ({kind})",
                threshold=thresholds.pop() if len(thresholds) == 1 else None,
                empty_as_inf=True,
            )
        )
    return written


def _file_part(text: str) -> str:
    """``text`` made safe as a file name: runs of other characters become ``-``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "plot"


# -- helpers -----------------------------------------------------------------------------------


def _model_key(names: Mapping[str, Any]) -> str:
    """What identifies a model: its source (or name), plus its weights when they are hashed."""
    model = str(names.get("model_source") or names.get("model"))
    weights = names.get("weights_hash")
    return f"{model}@{str(weights)[:8]}" if weights else model


def _versions(record: Mapping[str, Any]) -> str:
    versions = record.get("versions") or {}
    parts = [f"{name} {versions[name]}" for name in ("advsuite", "torch") if versions.get(name)]
    return " / ".join(parts)


def _metric(record: Mapping[str, Any], key: str) -> float | None:
    return finite_number((record.get("metrics") or {}).get(key))


def _eps_key(eps: float) -> float:
    # "0.1" from a by-eps dict and 0.1 from the config must meet in one row
    return round(eps, 9)

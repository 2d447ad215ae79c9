"""Table columns (shared by Markdown, HTML and CSV) and how their values are formatted."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from advsuite.leaderboard.queries import QueryRow, query_budgets
from advsuite.leaderboard.rows import DetailRow, LeaderboardRow
from advsuite.results.record import finite_number

_MISSING = "–"


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
# an audited row: RobustBench's "potentially unreliable" mark, and the report (a link on the HTML page)
_AUDIT = _Column("audit", "Audit", lambda r: r["audit"], "text", False)
_REPORT = _Column("audit_report", "Audit report", lambda r: r["audit_report"], "link", False)


def _audit_columns(rows: Sequence[LeaderboardRow]) -> list[_Column]:
    return [_AUDIT, _REPORT] if any(row["audit"] is not None for row in rows) else []


def columns(rows: Sequence[LeaderboardRow]) -> list[_Column]:
    """The flat table's columns (Markdown, CSV): fixed ones plus one per attack and metric found in ``rows``."""
    robust = sorted({a for row in rows for a in row["robust_accuracy"]})
    minimising = sorted({a for row in rows for a in row["success_rate"]})
    cols = [
        _RANK,
        _MODEL,
        _DEFENSE,
        _Column("dataset", "Dataset", lambda r: r["dataset"], "text", False),
        _Column("norm", "Norm", lambda r: r["norm"], "text", False),
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
    for metric, title in _titles(rows).items():
        for a in sorted({a for row in rows for a in row["extra"].get(metric, {})}):
            # "patch success" for attack patch, not "patch patch success"
            header = title if title.split()[0] == a else f"{a} {title}"
            cols.append(_Column(f"{metric}:{a}", header, _extra_getter(metric, a), "acc"))
    cols += [
        *_audit_columns(rows),
        _N,
        _Column("median_queries", "Queries", lambda r: r["queries"], "queries", False),
        _DATE,
        _Column("versions", "Versions", lambda r: r["versions"], "text", False),
    ]
    return cols


def ranking_columns(rows: Sequence[LeaderboardRow]) -> list[_Column]:
    """One block's ranking table (HTML): the block's heading names dataset, threat model and epsilon, and
    each attack gets one column, its robust accuracy, only when it ran in this block."""
    robust = sorted({a for row in rows for a in row["robust_accuracy"]})
    per_attack = [_Column(f"robust_accuracy:{a}", a, _getter("robust_accuracy", a), "acc") for a in robust]
    return [_RANK, _MODEL, _DEFENSE, _CLEAN, _WORST, _WORST_ATTACK, *per_attack, *_audit_columns(rows), _N, _DATE]


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
        for m, title in _titles(details).items()
        if m in present
    ]
    return cols


def _titles(rows: Sequence[LeaderboardRow] | Sequence[DetailRow]) -> dict[str, str]:
    """Every attack-declared metric in ``rows`` with its title, in the order the rows name them."""
    titles: dict[str, str] = {}
    for row in rows:
        for metric, title in row["extra_titles"].items():
            titles.setdefault(metric, title)
    return titles


def _getter(field: str, attack: str) -> Callable[[Any], Any]:
    return lambda row: row[field].get(attack)


def _extra_getter(metric: str, attack: str) -> Callable[[Any], Any]:
    return lambda row: row["extra"].get(metric, {}).get(attack)


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

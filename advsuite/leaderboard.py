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
"""

from __future__ import annotations

import csv
import html
import io
import math
import os
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
_MISSING = "–"


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


# -- rendering ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Column:
    key: str  # CSV header
    title: str  # Markdown/HTML header
    get: Callable[[LeaderboardRow], Any]
    kind: str  # how to format: acc, eps, dist, count, queries, text
    numeric: bool = True


def columns(rows: Sequence[LeaderboardRow]) -> list[_Column]:
    """The table's columns: fixed ones plus one per attack found in ``rows``."""
    robust = sorted({a for row in rows for a in row["robust_accuracy"]})
    minimising = sorted({a for row in rows for a in row["success_rate"]})
    cols = [
        _Column("rank", "Rank", lambda r: r["rank"], "count"),
        _Column("model", "Model", lambda r: r["model"], "text", False),
        _Column("defense", "Defense", lambda r: r["defense"], "text", False),
        _Column("dataset", "Dataset", lambda r: r["dataset"], "text", False),
        _Column("threat_model", "Threat model", lambda r: r["threat_model"], "text", False),
        _Column("epsilon", "Epsilon", lambda r: r["epsilon"], "eps"),
        _Column("clean_accuracy", "Clean acc.", lambda r: r["clean_accuracy"], "acc"),
        _Column("worst_case_robust_accuracy", "Worst-case robust acc.", lambda r: r["worst_case"], "acc"),
        _Column("worst_attack", "Worst attack", lambda r: r["worst_attack"], "text", False),
    ]
    for a in robust:
        cols.append(_Column(f"robust_accuracy:{a}", f"{a} robust acc.", _getter("robust_accuracy", a), "acc"))
    for a in minimising:
        cols.append(_Column(f"success_rate:{a}", f"{a} success rate", _getter("success_rate", a), "acc"))
        cols.append(_Column(f"median_l2:{a}", f"{a} median L2", _getter("median_l2", a), "dist"))
    cols += [
        _Column("n_examples", "n", lambda r: r["n_examples"], "count"),
        _Column("median_queries", "Queries", lambda r: r["queries"], "queries", False),
        _Column("date", "Date", lambda r: r["date"], "text", False),
        _Column("versions", "Versions", lambda r: r["versions"], "text", False),
    ]
    return cols


def _getter(field: str, attack: str) -> Callable[[LeaderboardRow], Any]:
    return lambda row: row[field].get(attack)  # type: ignore[literal-required]


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
    cols = columns(rows)
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


def render_html(rows: Sequence[LeaderboardRow], title: str = "advsuite leaderboard") -> str:
    """A standalone HTML page holding the table; every value is escaped."""
    cols = columns(rows)
    head = "".join(f"<th>{html.escape(c.title)}</th>" for c in cols)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="{"num" if c.numeric else "txt"}">{html.escape(_format(c.get(row), c.kind))}</td>' for c in cols
        )
        body.append(f"<tr>{cells}</tr>")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n"
        "<style>\n"
        "body { font-family: system-ui, sans-serif; margin: 2em; }\n"
        "table { border-collapse: collapse; }\n"
        "th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; }\n"
        "th { background: #f3f3f3; }\n"
        "td.num { text-align: right; font-variant-numeric: tabular-nums; }\n"
        "</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n"
        f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>\n"
        f"<p>{html.escape(NOTE)}</p>\n"
        "</body>\n</html>\n"
    )


def render_csv(rows: Sequence[LeaderboardRow]) -> str:
    """CSV with machine-friendly headers and raw values (accuracies as fractions)."""
    cols = columns(rows)
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
) -> dict[str, Path]:
    """Write ``<out_dir>/<stem>.<fmt>`` for each format (atomically); returns ``{fmt: path}``."""
    formats = list(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ConfigError(f"unknown leaderboard format(s) {unknown}; valid formats: {', '.join(FORMATS)}")
    renderers: dict[str, Callable[[], str]] = {
        "md": lambda: render_markdown(rows) + "\n" + NOTE + "\n",
        "html": lambda: render_html(rows),
        "csv": lambda: render_csv(rows),
    }
    out = Path(out_dir)
    return {fmt: atomic_write_text(out / f"{stem}.{fmt}", renderers[fmt]()) for fmt in formats}


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

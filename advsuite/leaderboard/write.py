"""Writing the tables and the sweep's query plots next to each other."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from advsuite.errors import ConfigError
from advsuite.leaderboard.queries import QueryRow
from advsuite.leaderboard.render import (
    NOTE,
    QUERY_NOTE,
    QUERY_TITLE,
    render_csv,
    render_html,
    render_markdown,
    render_query_csv,
    render_query_markdown,
)
from advsuite.leaderboard.rows import LeaderboardRow
from advsuite.results.record import atomic_write_text

FORMATS = ("md", "html", "csv")


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

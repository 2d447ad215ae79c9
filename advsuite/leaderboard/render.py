"""Rendering: Markdown, CSV and the standalone HTML page (from the ``page.html`` template)."""

from __future__ import annotations

import csv
import html
import importlib.resources
import io
from collections.abc import Sequence
from pathlib import Path
from string import Template
from typing import Any

from advsuite.leaderboard.columns import _Column, _format, _raw, columns, detail_columns, query_columns, ranking_columns
from advsuite.leaderboard.queries import QueryRow, query_groups
from advsuite.leaderboard.rows import LeaderboardRow, attack_details, blocks

NOTE = (
    "Worst case = minimum robust accuracy over the attacks run at this epsilon; ranked by it, most robust "
    "first, within each (dataset, norm, epsilon). Minimisation attacks without a robust accuracy at "
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


def render_html(
    rows: Sequence[LeaderboardRow], title: str = "advsuite leaderboard", query_rows: Sequence[QueryRow] = ()
) -> str:
    """A standalone HTML page: one sortable table per (dataset, norm, epsilon) block under its own
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
    page = importlib.resources.files("advsuite.leaderboard").joinpath("page.html").read_text(encoding="utf-8")
    return Template(page).substitute(title=html.escape(title), body="".join(parts))


def _html_table(cols: Sequence[_Column], rows: Sequence[Any]) -> str:
    # long attack names may break after an underscore, nowhere else
    head = "".join(
        f'<th scope="col" title="{html.escape(c.key)}">{html.escape(c.title).replace("_", "_<wbr>")}</th>' for c in cols
    )
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="{"num" if c.numeric else "txt"}" data-value="{html.escape(_raw(c.get(row), c.kind))}">'
            f"{_html_cell(c.get(row), c.kind)}</td>"
            for c in cols
        )
        body.append(f"<tr>{cells}</tr>")
    return (
        f'<table class="sortable">\n<thead><tr>{head}</tr></thead>\n<tbody>\n'
        + "\n".join(body)
        + "\n</tbody>\n</table>\n"
    )


def _html_cell(value: Any, kind: str) -> str:
    if kind == "link" and value:
        return f'<a href="{html.escape(Path(value).absolute().as_uri())}">report</a>'
    return html.escape(_format(value, kind))


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

"""Leaderboards: rank models and defenses by worst-case robust accuracy over the attacks run.

One row per (model, defense, dataset, norm, epsilon), RobustBench style: clean accuracy,
robust accuracy for each attack, and the worst case (the minimum over attacks), ranked most robust
first within each (dataset, norm, epsilon) block.

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

The package: ``records`` (what a record gives and the one filter), ``rows`` (the ranking), ``queries`` (query
efficiency), ``columns`` (table columns and formatting), ``render`` (Markdown, CSV and the HTML page from the
``page.html`` template) and ``write`` (files and the sweep's plots).
"""

from advsuite.leaderboard.columns import columns, detail_columns, query_columns, ranking_columns
from advsuite.leaderboard.queries import QueryRow, build_query_table, query_budgets, query_groups
from advsuite.leaderboard.records import RunView, evaluate_records, metric_titles
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
from advsuite.leaderboard.rows import DetailRow, LeaderboardRow, attack_details, blocks, build_leaderboard
from advsuite.leaderboard.write import FORMATS, write_leaderboard, write_query_plots

__all__ = [
    "FORMATS",
    "NOTE",
    "QUERY_NOTE",
    "QUERY_TITLE",
    "DetailRow",
    "LeaderboardRow",
    "QueryRow",
    "RunView",
    "attack_details",
    "blocks",
    "build_leaderboard",
    "build_query_table",
    "columns",
    "detail_columns",
    "evaluate_records",
    "metric_titles",
    "query_budgets",
    "query_columns",
    "query_groups",
    "ranking_columns",
    "render_csv",
    "render_html",
    "render_markdown",
    "render_query_csv",
    "render_query_markdown",
    "write_leaderboard",
    "write_query_plots",
]

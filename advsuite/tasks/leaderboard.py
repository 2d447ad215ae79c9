"""``task=leaderboard``: read the results index and write ranked tables (and the sweep's query plots)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from advsuite.leaderboard import (
    FORMATS,
    QUERY_TITLE,
    build_leaderboard,
    build_query_table,
    render_markdown,
    render_query_markdown,
    write_leaderboard,
    write_query_plots,
)
from advsuite.leaderboard.backdoor import (
    build_backdoor_grids,
    render_backdoor_csv,
    render_backdoor_html,
    render_backdoor_markdown,
)
from advsuite.paths import advsuite_home
from advsuite.results.record import atomic_write_text
from advsuite.results.store import ResultsStore


def run_leaderboard(cfg: DictConfig) -> dict[str, Any]:
    """Build the leaderboard for ``cfg.task.{dataset, norm, epsilon}``, print it and write files.

    Decision-based (minimisation) attacks with budget metrics also get the query-efficiency table
    (not when ``task.epsilon`` is set: they have no epsilon) and, with ``task.plot`` (default true),
    one distortion-vs-queries figure per (dataset, model, defense, targeted).

    Returns ``{"rows": [...], "query_rows": [...], "paths": {fmt: path}, "plots": [path, ...],
    "n_records": int, "rebuilt": int | None}``.
    """
    task = cfg.task
    paths = cfg.get("paths") or {}
    home = advsuite_home(paths.get("home"))
    dataset, norm = task.get("dataset"), task.get("norm")
    epsilon = task.get("epsilon")
    store = ResultsStore(home)
    rebuilt = None
    if task.get("rebuild", False):
        rebuilt = store.rebuild()
        print(f"re-indexed {rebuilt} run(s) from {home}")
    records = [
        r for task_name in ("evaluate", "audit") for r in store.records(dataset=dataset, norm=norm, task=task_name)
    ]
    rows = build_leaderboard(records, dataset=dataset, norm=norm, epsilon=None if epsilon is None else float(epsilon))
    query_rows = [] if epsilon is not None else build_query_table(records, dataset=dataset, norm=norm)
    if rows:
        print(render_markdown(rows))
    if query_rows:
        print(f"{QUERY_TITLE}\n\n{render_query_markdown(query_rows)}")
    grids = build_backdoor_grids(
        r for task_name in ("backdoor", "backdoor_defense") for r in store.records(dataset=dataset, task=task_name)
    )
    if grids:
        print(render_backdoor_markdown(grids))
    if not rows and not query_rows and not grids:
        print(
            f"no finished evaluate runs for dataset={dataset} norm={norm} epsilon={epsilon} "
            f"in {store.path}; run some first (python -m advsuite ...), or pass task.rebuild=true if run "
            "directories were copied here"
        )
    out_dir = Path(task.get("out_dir") or home / "leaderboard")
    stem = "_".join(["leaderboard", *(str(v) for v in (dataset, norm, epsilon) if v is not None)])
    formats = list(task.get("formats") or FORMATS)
    written = write_leaderboard(rows, out_dir, formats=formats, stem=stem, query_rows=query_rows)
    for fmt, path in written.items():
        print(f"wrote {fmt}: {path}")
    if grids:
        grid_stem = "_".join(["backdoor_grid", *([str(dataset)] if dataset else [])])
        render = {"md": render_backdoor_markdown, "html": render_backdoor_html, "csv": render_backdoor_csv}
        for fmt in formats:
            path = atomic_write_text(out_dir / f"{grid_stem}.{fmt}", render[fmt](grids))
            written[f"backdoor_{fmt}"] = path
            print(f"wrote backdoor grid {fmt}: {path}")
    plots = write_query_plots(query_rows, out_dir, stem=stem) if task.get("plot", True) else []
    for path in plots:
        print(f"wrote plot: {path}")
    return {
        "rows": rows,
        "query_rows": query_rows,
        "paths": {fmt: str(p) for fmt, p in written.items()},
        "plots": [str(p) for p in plots],
        "n_records": len(records),
        "backdoor_grids": grids,
        "rebuilt": rebuilt,
    }

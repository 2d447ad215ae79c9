"""``task=leaderboard``: read the results index and write ranked tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from advsuite.leaderboard import FORMATS, build_leaderboard, render_markdown, write_leaderboard
from advsuite.paths import advsuite_home
from advsuite.results.store import ResultsStore


def run_leaderboard(cfg: DictConfig) -> dict[str, Any]:
    """Build the leaderboard for ``cfg.task.{dataset, threat_model, epsilon}``, print it and write files.

    Returns ``{"rows": [...], "paths": {fmt: path}, "n_records": int, "rebuilt": int | None}``.
    """
    task = cfg.task
    paths = cfg.get("paths") or {}
    home = advsuite_home(paths.get("home"))
    dataset, threat_model = task.get("dataset"), task.get("threat_model")
    epsilon = task.get("epsilon")
    store = ResultsStore(home)
    rebuilt = None
    if task.get("rebuild", False):
        rebuilt = store.rebuild()
        print(f"re-indexed {rebuilt} run(s) from {home}")
    records = store.records(dataset=dataset, threat_model=threat_model, task="evaluate")
    rows = build_leaderboard(
        records, dataset=dataset, threat_model=threat_model, epsilon=None if epsilon is None else float(epsilon)
    )
    if rows:
        print(render_markdown(rows))
    else:
        print(
            f"no finished evaluate runs for dataset={dataset} threat_model={threat_model} epsilon={epsilon} "
            f"in {store.path}; run some first (python -m advsuite ...), or pass task.rebuild=true if run "
            "directories were copied here"
        )
    out_dir = Path(task.get("out_dir") or home / "leaderboard")
    stem = "_".join(["leaderboard", *(str(v) for v in (dataset, threat_model, epsilon) if v is not None)])
    formats = list(task.get("formats") or FORMATS)
    written = write_leaderboard(rows, out_dir, formats=formats, stem=stem)
    for fmt, path in written.items():
        print(f"wrote {fmt}: {path}")
    return {
        "rows": rows,
        "paths": {fmt: str(p) for fmt, p in written.items()},
        "n_records": len(records),
        "rebuilt": rebuilt,
    }

"""Leaderboard grouping, worst case, ranking and rendering, on synthetic records with known answers."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from advsuite.errors import ConfigError
from advsuite.leaderboard import (
    build_leaderboard,
    render_csv,
    render_html,
    render_markdown,
    write_leaderboard,
)
from advsuite.results import ResultsStore, write_record
from advsuite.tasks.leaderboard import run_leaderboard

CONF = Path(__file__).resolve().parents[1] / "conf" / "task" / "leaderboard.yaml"


def rec(
    run_id: str,
    model: str,
    attack: str,
    robust: float | None,
    *,
    defense: str = "none",
    clean: float = 0.99,
    eps: float | None = 0.3,
    dataset: str = "mnist5k",
    access: str = "whitebox",
    created: str = "2024-05-01T12:00:00+00:00",
    status: str = "finished",
    **metrics: Any,
) -> dict[str, Any]:
    return {
        "schema": 1,
        "run_id": run_id,
        "status": status,
        "created": created,
        "versions": {"advsuite": "0.1.0", "torch": "2.4.0"},
        "names": {
            "task": "evaluate",
            "dataset": dataset,
            "model": model,
            "model_source": f"zoo:{model}",
            "weights_hash": metrics.pop("weights_hash", None),
            "attack": attack,
            "defense": defense,
            "threat_model": "linf",
            "epsilon": eps,
            "access": access,
        },
        "metrics": {"n_examples": 100, "clean_accuracy": clean, "robust_accuracy": robust, **metrics},
    }


def records() -> list[dict[str, Any]]:
    return [
        # model a: pgd swept over three epsilons, square (score-based) is stronger at 0.3
        rec("a-pgd", "a", "pgd", 0.60, robust_accuracy_by_eps={"0.1": 0.95, "0.2": 0.80, "0.3": 0.60}),
        rec("a-square", "a", "square", 0.55, access="score", median_queries=300.0, n_examples=50, created="2024-05-03"),
        # qeba minimises L2: no robust accuracy at eps, so it stays out of the worst case
        rec("a-qeba", "a", "qeba", None, access="label", success_rate=0.9, median_l2=1.2345, median_queries=1000.0),
        rec("a-failed", "a", "pgd", 0.0, status="failed"),
        # model b: an old pgd run is superseded by the latest one
        rec("b-pgd-old", "b", "pgd", 0.10, created="2024-04-01T00:00:00+00:00"),
        rec("b-pgd", "b", "pgd", 0.70, clean=0.98),
        rec("b-square", "b", "square", 0.72, clean=0.98, access="score", median_queries=500.0),
        rec("b-jpeg-pgd", "b", "pgd", 0.80, defense="jpeg", clean=0.95),
        # model c (hashed weights) only has a minimisation attack: listed, but unranked
        rec("c-qeba", "c", "qeba", None, access="label", success_rate=1.0, median_l2=0.5, weights_hash="abcdef123456"),
        rec("z-cifar", "z", "pgd", 0.01, dataset="cifar10"),
        {**rec("t-train", "t", "pgd", 0.99), "names": {"task": "train", "dataset": "mnist5k"}},
    ]


def test_grouping_worst_case_and_ranking() -> None:
    rows = build_leaderboard(records(), dataset="mnist5k", threat_model="linf")
    summary = [(r["epsilon"], r["rank"], r["model"], r["defense"], r["worst_case"], r["worst_attack"]) for r in rows]
    assert summary == [
        (0.1, 1, "zoo:a", "none", 0.95, "pgd"),
        (0.2, 1, "zoo:a", "none", 0.80, "pgd"),
        (0.3, 1, "zoo:b", "jpeg", 0.80, "pgd"),
        (0.3, 2, "zoo:b", "none", 0.70, "pgd"),  # min(0.70, 0.72); the old 0.10 run is superseded
        (0.3, 3, "zoo:a", "none", 0.55, "square"),  # min(0.60, 0.55); qeba excluded
        (0.3, None, "zoo:c@abcdef12", "none", None, None),
    ]
    a = rows[4]
    assert a["robust_accuracy"] == {"pgd": 0.60, "square": 0.55}
    assert a["success_rate"] == {"qeba": 0.9} and a["median_l2"] == {"qeba": 1.2345}
    assert a["queries"] == {"qeba": 1000.0, "square": 300.0}  # white-box pgd has none
    assert a["n_examples"] == 50  # the smallest sample behind the row
    assert a["clean_accuracy"] == 0.99 and a["date"] == "2024-05-03"
    assert a["versions"] == "advsuite 0.1.0 / torch 2.4.0"
    assert a["run_ids"] == ["a-pgd", "a-qeba", "a-square"]
    assert rows[3]["clean_accuracy"] == 0.98

    # no filter: cifar10 comes first (datasets sorted); the train record never appears
    everything = build_leaderboard(records())
    assert everything[0]["dataset"] == "cifar10" and everything[0]["rank"] == 1
    assert len(everything) == len(rows) + 1
    # epsilon filter
    only = build_leaderboard(records(), epsilon=0.2)
    assert [(r["model"], r["worst_case"]) for r in only] == [("zoo:a", 0.80)]


def test_renderers_contain_expected_cells() -> None:
    rows = build_leaderboard(records(), dataset="mnist5k", epsilon=0.3)
    md = render_markdown(rows)
    lines = md.splitlines()
    assert lines[0].startswith("| Rank | Model | Defense | Dataset | Threat model | Epsilon | Clean acc. |")
    assert "pgd robust acc." in lines[0] and "square robust acc." in lines[0]
    assert "qeba success rate" in lines[0] and "qeba median L2" in lines[0]
    assert lines[2].startswith("| 1 | zoo:b | jpeg | mnist5k | linf | 0.3 | 95.00% | 80.00% | pgd | 80.00% | – |")
    row_a = "| 3 | zoo:a | none | mnist5k | linf | 0.3 | 99.00% | 55.00% | square | 60.00% | 55.00% | 90.00% | 1.234 |"
    assert row_a in md
    assert "qeba: 1000, square: 300" in md
    assert len(lines) == 2 + 4

    table = list(csv.DictReader(io.StringIO(render_csv(rows))))
    assert [r["model"] for r in table] == ["zoo:b", "zoo:b", "zoo:a", "zoo:c@abcdef12"]
    assert table[2]["worst_case_robust_accuracy"] == "0.55"
    assert table[2]["robust_accuracy:pgd"] == "0.6" and table[2]["median_l2:qeba"] == "1.2345"
    assert table[2]["median_queries"] == "qeba=1000.0;square=300.0"
    assert table[3]["rank"] == "" and table[3]["success_rate:qeba"] == "1.0"

    page = render_html(rows)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<th>Worst-case robust acc.</th>" in page
    assert '<td class="num">80.00%</td>' in page and '<td class="txt">zoo:c@abcdef12</td>' in page


def test_values_are_escaped() -> None:
    evil = rec("x", "<script>alert(1)</script>", "pgd", 0.5, defense="a|b & c")
    rows = build_leaderboard([evil])
    page = render_html(rows)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "a|b &amp; c" in page
    md = render_markdown(rows)
    assert "a\\|b & c" in md and md.splitlines()[2].count(" | ") == md.splitlines()[0].count(" | ")
    assert list(csv.reader(io.StringIO(render_csv(rows))))[1][2] == "a|b & c"


def test_empty_leaderboard_renders() -> None:
    assert render_markdown([]).count("\n") == 2
    assert "<tbody>" in render_html([])
    assert render_csv([]).startswith("rank,model,")


def test_write_leaderboard(tmp_path: Path) -> None:
    rows = build_leaderboard(records())
    paths = write_leaderboard(rows, tmp_path / "out", stem="board")
    assert set(paths) == {"md", "html", "csv"}
    assert paths["md"] == tmp_path / "out" / "board.md"
    assert paths["md"].read_text().startswith(render_markdown(rows))
    assert paths["csv"].read_text() == render_csv(rows)
    assert write_leaderboard(rows, tmp_path / "csv_only", formats=["csv"]).keys() == {"csv"}
    with pytest.raises(ConfigError, match="valid formats"):
        write_leaderboard(rows, tmp_path, formats=["pdf"])


def test_run_leaderboard_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = ResultsStore(tmp_path)
    for i, record in enumerate(records()):
        record["run_dir"] = str(tmp_path / "runs" / "2024-05-01" / f"{i:02d}")
        write_record(record["run_dir"], record)
        store.index(record)
    task = OmegaConf.load(CONF)
    assert task.name == "leaderboard" and task.out_dir is None and task.rebuild is False
    cfg = OmegaConf.create({"task": task, "paths": {"home": str(tmp_path)}})
    cfg.task.dataset, cfg.task.threat_model = "mnist5k", "linf"

    result = run_leaderboard(cfg)
    out = capsys.readouterr().out
    assert "| 1 | zoo:b | jpeg |" in out and "wrote md:" in out
    assert result["paths"]["md"] == str(tmp_path / "leaderboard" / "leaderboard_mnist5k_linf.md")
    assert Path(result["paths"]["html"]).is_file() and len(result["rows"]) == 6
    assert result["n_records"] == 8  # finished evaluate records of mnist5k/linf

    # the index is only a cache: delete it and rebuild from the records
    store.path.unlink()
    cfg.task.rebuild, cfg.task.out_dir, cfg.task.formats = True, str(tmp_path / "again"), ["csv"]
    again = run_leaderboard(cfg)
    assert again["rebuilt"] == 11 and again["rows"] == result["rows"]
    assert list(again["paths"]) == ["csv"]


def test_run_leaderboard_without_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = OmegaConf.create({"task": OmegaConf.load(CONF), "paths": {"home": str(tmp_path)}})
    result = run_leaderboard(cfg)
    assert result["rows"] == [] and "no finished evaluate runs" in capsys.readouterr().out

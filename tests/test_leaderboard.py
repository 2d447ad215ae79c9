"""Leaderboard grouping, worst case, ranking and rendering, on synthetic records with known answers."""

from __future__ import annotations

import csv
import io
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from advsuite.errors import ConfigError
from advsuite.leaderboard import (
    blocks,
    build_leaderboard,
    build_query_table,
    render_csv,
    render_html,
    render_markdown,
    render_query_csv,
    render_query_markdown,
    write_leaderboard,
    write_query_plots,
)
from advsuite.results import ResultsStore, write_record
from advsuite.results.traces import TRACES_NAME, write_traces
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
    titles: dict[str, str] | None = None,
    target: str | None = None,
    **metrics: Any,
) -> dict[str, Any]:
    """A record; ``titles`` are the attack's leaderboard metrics as new records carry them, ``target`` the
    attack class in the config (how a record written before they travelled names them)."""
    out: dict[str, Any] = {
        **({"metric_titles": titles} if titles is not None else {}),
        **({"config": {"attack": {"_target_": target}}} if target else {}),
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
            "norm": "linf",
            "epsilon": eps,
            "access": access,
        },
        "metrics": {"n_examples": 100, "clean_accuracy": clean, "robust_accuracy": robust, **metrics},
    }
    return out


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
    rows = build_leaderboard(records(), dataset="mnist5k", norm="linf")
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
    assert lines[0].startswith("| Rank | Model | Defense | Dataset | Norm | Epsilon | Clean acc. |")
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
    assert '<th scope="col" title="worst_case_robust_accuracy">Worst-case robust acc.</th>' in page
    assert '<td class="num" data-value="0.8">80.00%</td>' in page
    assert '<td class="txt" data-value="zoo:c@abcdef12">zoo:c@abcdef12</td>' in page


def test_values_are_escaped() -> None:
    evil = rec("x", "<script>alert(1)</script>", "pgd", 0.5, defense="a|b & c")
    rows = build_leaderboard([evil])
    page = render_html(rows)
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
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
    cfg.task.dataset, cfg.task.norm = "mnist5k", "linf"

    result = run_leaderboard(cfg)
    out = capsys.readouterr().out
    assert "| 1 | zoo:b | jpeg |" in out and "wrote md:" in out
    assert result["paths"]["md"] == str(tmp_path / "leaderboard" / "leaderboard_mnist5k_linf.md")
    assert Path(result["paths"]["html"]).is_file() and len(result["rows"]) == 6
    assert result["n_records"] == 8  # finished evaluate records of mnist5k/linf
    # no record has budget metrics: no query table, no plots
    assert result["query_rows"] == [] and result["plots"] == [] and "csv_queries" not in result["paths"]
    assert "Query efficiency" not in Path(result["paths"]["md"]).read_text()

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


# -- the query-efficiency table and the sweep plot -------------------------------------------------

BUDGETS = ("1000", "2000", "5000", "10000")


def query_rec(
    run_id: str,
    model: str,
    attack: str,
    mse: tuple[float | None, ...],
    *,
    targeted: bool | None = False,
    success: tuple[float | None, ...] = (0.1, 0.2, 0.5, 0.8),
    created: str = "2024-05-01T12:00:00+00:00",
    **kwargs: Any,
) -> dict[str, Any]:
    """A decision-based (minimisation) record with budget metrics; MSE per budget, L2 = 10 * MSE."""
    record = rec(run_id, model, attack, None, eps=None, access="label", created=created, success_rate=1.0, **kwargs)
    record["names"]["norm"] = "l2"
    if targeted is not None:
        record["names"]["targeted"] = targeted
    record["metrics"].update(
        n_attacked=90,
        flips=1,
        query_budgets=[int(b) for b in BUDGETS],
        mse_threshold=1e-3,
        l2_threshold=None,
        median_mse_at=dict(zip(BUDGETS, mse, strict=True)),
        geomean_mse_at=dict(zip(BUDGETS, mse, strict=True)),
        median_l2_at={b: None if v is None else 10 * v for b, v in zip(BUDGETS, mse, strict=True)},
        n_found_at=dict.fromkeys(BUDGETS, 90),
        success_rate_at=dict(zip(BUDGETS, success, strict=True)),
        success_rate_l2_at=None,
    )
    return record


def query_records() -> list[dict[str, Any]]:
    return [
        query_rec("a-hsja", "a", "hsja", (4e-3, 2e-3, 1e-3, 5e-4)),
        query_rec("a-qeba-old", "a", "qeba", (9.0, 9.0, 9.0, 9.0), created="2024-04-01"),  # superseded
        query_rec("a-qeba", "a", "qeba", (1e-3, 5e-4, 2e-4, None), success=(0.5, 0.7, 0.9, None)),  # ran 5k
        query_rec("a-qeba-t", "a", "qeba", (2e-2, 1e-2, 5e-3, 2e-3), targeted=True),
        # an older record without names.targeted: the config says whether it was targeted
        {
            **query_rec("a-hsja-t", "a", "hsja", (3e-2, 2e-2, 1e-2, 8e-3), targeted=None),
            "config": {"attack": {"targeted": True}},
        },
        # a minimisation attack recorded before budget metrics existed: not in the query table
        rec("a-old", "a", "boundary", None, eps=None, access="label", success_rate=0.9, median_l2=2.0),
    ]


def test_query_table_rows_and_rendering() -> None:
    everything = records() + query_records()
    rows = build_query_table(everything)
    summary = [(r["model"], r["attack"], r["targeted"], r["norm"], r["run_id"]) for r in rows]
    assert summary == [
        ("zoo:a", "hsja", False, "l2", "a-hsja"),
        ("zoo:a", "qeba", False, "l2", "a-qeba"),
        ("zoo:a", "hsja", True, "l2", "a-hsja-t"),
        ("zoo:a", "qeba", True, "l2", "a-qeba-t"),
    ]
    qeba = rows[1]
    assert qeba["median_mse_at"] == {"1000": 1e-3, "2000": 5e-4, "5000": 2e-4, "10000": None}
    assert qeba["success_rate_at"]["2000"] == 0.7 and qeba["mse_threshold"] == 1e-3 and qeba["n_attacked"] == 90
    assert qeba["flips"] == 1
    assert qeba["traces"] is None  # the synthetic record has no run directory
    assert build_query_table(everything, dataset="cifar10") == []
    assert build_query_table(everything, norm="linf") == []

    md = render_query_markdown(rows)
    lines = md.splitlines()
    assert lines[0] == (
        "| Dataset | Model | Defense | Attack | Targeted | Norm | n | Flips | MSE thr. "
        "| median MSE @1k | median MSE @2k | median MSE @5k | median MSE @10k "
        "| median L2 @1k | median L2 @2k | median L2 @5k | median L2 @10k "
        "| success @1k | success @2k | success @5k | success @10k | Date |"
    )
    assert lines[3] == (
        "| mnist5k | zoo:a | none | qeba | no | l2 | 90 | 1 | 0.001 | 0.001 | 0.0005 | 0.0002 | – "
        "| 0.01 | 0.005 | 0.002 | – | 50.00% | 70.00% | 90.00% | – | 2024-05-01 |"
    )
    assert "| hsja | yes |" in md and len(lines) == 2 + 4

    table = list(csv.DictReader(io.StringIO(render_query_csv(rows))))
    assert table[1]["median_mse_at:5000"] == "0.0002" and table[1]["median_mse_at:10000"] == ""
    assert table[1]["geomean_mse_at:1000"] == "0.001" and table[1]["n_found_at:1000"] == "90"
    assert table[1]["targeted"] == "False" and table[1]["run_id"] == "a-qeba"

    # the main leaderboard is unchanged by the new metrics: qeba/hsja stay in their own columns
    main = build_leaderboard(everything, dataset="mnist5k", epsilon=0.3)
    assert [(r["model"], r["worst_case"]) for r in main] == [
        ("zoo:b", 0.80),
        ("zoo:b", 0.70),
        ("zoo:a", 0.55),
        ("zoo:c@abcdef12", None),
    ]
    page = render_html(build_leaderboard(everything), query_rows=rows)
    assert "<h2>Query efficiency (decision-based attacks)</h2>" in page and ">median MSE @10k</th>" in page
    assert "Query efficiency" not in render_html(build_leaderboard(everything))


def fake_traces(n: int, start: float, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        queries = torch.cumsum(torch.randint(50, 150, (40,), generator=gen), 0).double()
        out.append(torch.stack([queries, start * torch.exp(-queries / 2000)], dim=1))
    return out


def test_run_leaderboard_writes_query_table_and_sweep_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = ResultsStore(tmp_path)
    for i, record in enumerate(query_records()):
        run_dir = tmp_path / "runs" / "2024-05-01" / f"{i:02d}"
        record["run_dir"] = str(run_dir)
        if record["run_id"] != "a-hsja-t":  # its traces were lost: no curve, the others still drawn
            write_traces(run_dir / TRACES_NAME, fake_traces(6, 3.0 + i, seed=i), list(range(6)), n_dims=784)
            record["artifacts"] = {"plot": None, "grid": None, "traces": TRACES_NAME}
        write_record(run_dir, record)
        store.index(record)
    cfg = OmegaConf.create({"task": OmegaConf.load(CONF), "paths": {"home": str(tmp_path)}})
    assert cfg.task.plot is True

    result = run_leaderboard(cfg)
    out = capsys.readouterr().out
    assert "Query efficiency (decision-based attacks)" in out and "| mnist5k | zoo:a | none | qeba | no |" in out
    assert len(result["query_rows"]) == 4
    md = Path(result["paths"]["md"]).read_text()
    assert "## Query efficiency (decision-based attacks)" in md and "median MSE @10k" in md
    assert Path(result["paths"]["csv_queries"]).name == "leaderboard_queries.csv"
    assert "median_mse_at:1000" in Path(result["paths"]["csv_queries"]).read_text()
    # one figure per (dataset, model, defense, targeted), next to the tables, listed in the output
    plots = [Path(p) for p in result["plots"]]
    assert [p.name for p in plots] == [
        "leaderboard_queries_mnist5k_zoo-a_none_untargeted.png",
        "leaderboard_queries_mnist5k_zoo-a_none_targeted.png",
    ]
    for path in plots:
        assert path.parent == tmp_path / "leaderboard" and path.read_bytes()[:4] == b"\x89PNG"
        assert f"wrote plot: {path}" in out

    cfg.task.plot, cfg.task.out_dir = False, str(tmp_path / "no_plots")
    assert run_leaderboard(cfg)["plots"] == []
    cfg.task.epsilon = 0.3  # decision-based attacks have no epsilon: no query table at one
    assert run_leaderboard(cfg)["query_rows"] == []


def test_write_query_plots_skips_missing_traces(tmp_path: Path) -> None:
    rows = build_query_table(query_records())
    assert write_query_plots(rows, tmp_path) == []  # no traces anywhere: no figure
    rows[0]["traces"] = str(tmp_path / "gone" / TRACES_NAME)
    with pytest.warns(RuntimeWarning, match="no curve for hsja"):
        assert write_query_plots(rows, tmp_path) == []


DIVA_TARGET = "advsuite.attacks.edge.diva.DIVA"


def test_attack_specific_metrics_get_a_column_per_attack() -> None:
    rows = build_leaderboard(
        [
            rec("u", "a", "uap_datafree", 0.4, titles={"fooling_rate": "fooling rate"}, fooling_rate=0.62),
            # an older record: its attack class declares the titles
            rec(
                "d",
                "a",
                "diva",
                0.9,
                target=DIVA_TARGET,
                evasive_success=0.35,
                adapted_success=0.8,
            ),
            # a metric the attack does not declare gets no column
            rec("p", "a", "pgd", 0.1, titles={}, fooling_rate=0.9),
            rec("x", "a", "gone", 0.2, target="no.such.Attack", fooling_rate=0.9),
        ]
    )
    (row,) = rows
    assert row["extra"]["fooling_rate"] == {"uap_datafree": 0.62}
    assert row["extra"]["evasive_success"] == {"diva": 0.35}
    assert row["extra_titles"]["adapted_success"] == "adapted-model success"
    table = render_markdown(rows)
    assert "uap_datafree fooling rate" in table and "diva evasive success" in table
    assert "pgd fooling rate" not in table and "gone fooling rate" not in table
    header, values = (line.split(",") for line in render_csv(rows).splitlines()[:2])
    assert dict(zip(header, values, strict=True))["fooling_rate:uap_datafree"] == "0.62"


PATCH_TITLES = {"patch_success": "patch success"}


class _Tables(HTMLParser):
    """Collects each table's header titles and its rows' cells, and the h2 before it."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[dict[str, Any]] = []
        self.headings: list[str] = []
        self.scripts = ""
        self._in: str | None = None
        self._text = ""
        self._body = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append({"heading": self.headings[-1] if self.headings else None, "head": [], "rows": []})
        elif tag == "tbody":
            self._body = True
        elif tag == "tr" and self._body:
            self.tables[-1]["rows"].append([])
        if tag in ("th", "td", "h2", "script"):
            self._in, self._text = tag, ""

    def handle_data(self, data: str) -> None:
        if self._in:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "tbody":
            self._body = False
        if tag != self._in:
            return
        if tag == "th":
            self.tables[-1]["head"].append(self._text)
        elif tag == "td":
            self.tables[-1]["rows"][-1].append(self._text)
        elif tag == "h2":
            self.headings.append(self._text)
        elif tag == "script":
            self.scripts += self._text
        self._in = None


def test_html_page_has_one_sortable_table_per_block_with_only_its_attacks() -> None:
    extra = [
        rec("p-patch", "p", "patch", 0.4, dataset="cifar10", titles=PATCH_TITLES, patch_success=0.6),
        rec("p-gan", "p", "patch_gan", 0.5, dataset="cifar10", titles=PATCH_TITLES, patch_success=0.3),
    ]
    rows = build_leaderboard(records() + extra)
    page = render_html(rows)
    parsed = _Tables()
    parsed.feed(page)
    block_titles = [b[0] for b in blocks(rows)]
    ranking = [t for t in parsed.tables if t["head"][0] == "Rank"]
    details = [t for t in parsed.tables if t["head"][:3] == ["Model", "Defense", "Attack"]]
    assert len(ranking) + len(details) == len(parsed.tables)
    assert [t["heading"] for t in ranking] == block_titles  # one ranking table under each block's heading
    assert block_titles == [
        "cifar10 · linf · ε = 0.3",
        "mnist5k · linf · ε = 0.1",
        "mnist5k · linf · ε = 0.2",
        "mnist5k · linf · ε = 0.3",
    ]
    for table in parsed.tables:
        assert table["rows"] and all(len(row) == len(table["head"]) for row in table["rows"]), table
    assert all(t["rows"][0][0] == "1" for t in ranking)  # ranks start at 1 in every block
    cifar, _, _, mnist_03 = ranking
    assert cifar["head"][6:-2] == ["patch", "patch_gan", "pgd"]  # a column per attack run in this block
    assert mnist_03["head"][6:-2] == ["pgd", "square"]
    # attack-specific metrics only in the detail table of the block they belong to, titled once
    cifar_details, mnist_details = details
    assert "patch success" in cifar_details["head"] and "patch success" not in mnist_details["head"]
    assert ["zoo:a", "none", "qeba", "–", "90.00%", "1.234", "1000"] in mnist_details["rows"]
    assert len(max(parsed.tables, key=lambda t: len(t["head"]))["head"]) <= 16  # fits a 1,400 px window
    # sortable by plain JavaScript in the page (no CDN), headers stick while scrolling
    assert 'addEventListener("click"' in parsed.scripts and "aria-sort" in parsed.scripts
    assert "position: sticky" in page and "<script src" not in page and "http" not in parsed.scripts


def test_a_record_is_read_through_one_typed_view_in_todays_words() -> None:
    from advsuite.leaderboard import RunView, evaluate_records

    old = rec("o", "a", "pgd", 0.4, weights_hash="0123456789abcdef", created="2024-05-01T12:00:00Z")
    old["names"]["threat_model"] = old["names"].pop("norm")  # a record from before the rename
    old["names"].pop("targeted", None)
    old["config"] = {"attack": {"targeted": True}}
    (run,) = evaluate_records([old], dataset="mnist5k", norm="linf")
    assert isinstance(run, RunView) and "threat_model" in old["names"]  # the caller's dict is left alone
    assert (run.norm, run.model, run.defense, run.attack, run.epsilon) == ("linf", "zoo:a@01234567", "none", "pgd", 0.3)
    assert run.targeted and run.metric("robust_accuracy") == 0.4 and run.metric("no_such_metric") is None
    assert run.versions == "advsuite 0.1.0 / torch 2.4.0" and run.order[0] > 0
    assert list(evaluate_records([old], dataset="mnist5k", norm="l2")) == []


def test_an_audited_row_is_marked_and_links_its_report() -> None:
    def audit(run_id: str, defense: str, robust: float, flags: list[str], created: str) -> dict[str, Any]:
        out = rec(run_id, "a", "audit", robust, defense=defense, created=created, flags=flags)
        out["names"]["task"] = "audit"
        return {**out, "run_dir": f"/runs/{run_id}", "artifacts": {"report": "audit.md", "report_html": "audit.html"}}

    board = [
        rec("a-pgd", "a", "pgd", 0.9, defense="jpeg"),
        audit("a-audit-old", "jpeg", 0.5, [], "2024-04-01T00:00:00+00:00"),
        audit("a-audit", "jpeg", 0.1, ["naive gap", "transfer"], "2024-05-02T00:00:00+00:00"),
        rec("a-plain", "a", "pgd", 0.2),
        audit("a-clean", "none", 0.15, [], "2024-05-02T00:00:00+00:00"),
    ]
    rows = {r["defense"]: r for r in build_leaderboard(board, dataset="mnist5k")}
    jpeg, plain = rows["jpeg"], rows["none"]
    # the latest audit decides the mark, and its lowest robust accuracy is the row's worst case
    assert jpeg["audit"] == "unreliable: naive gap, transfer" and jpeg["worst_case"] == 0.1
    assert jpeg["worst_attack"] == "audit" and jpeg["audit_report"] == "/runs/a-audit/audit.html"
    assert plain["audit"] == "no flag"
    md = render_markdown(list(rows.values()))
    assert "| Audit | Audit report |" in md and "unreliable: naive gap, transfer" in md
    page = render_html(list(rows.values()))
    assert '<a href="file:///runs/a-audit/audit.html">report</a>' in page
    # rows without an audit get no audit columns at all
    assert "Audit" not in render_markdown(build_leaderboard(records(), dataset="mnist5k"))

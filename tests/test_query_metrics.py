"""Budget metrics of query attacks (distortion within 1k/2k/5k/10k queries) and the traces artifact.

The traces are made by hand, so every median, geometric mean and success rate is known exactly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from advsuite.attack import Access, Attack, AttackResult
from advsuite.errors import ConfigError, InputError
from advsuite.evaluation import DEFAULT_BUDGETS, check_budgets, evaluate, query_metrics
from advsuite.models import Classifier
from advsuite.recording import RunRecorder, format_summary, write_artifacts
from advsuite.results import read_record
from advsuite.results.traces import TRACES_NAME, load_traces, read_traces, traces_path, write_traces


def handmade_traces() -> list[torch.Tensor]:
    """Four attacked images: (queries, L2) step functions."""
    return [
        torch.tensor([[10.0, 4.0], [100.0, 2.0]]),  # A: adversarial from 10 queries on
        torch.tensor([[50.0, 6.0], [150.0, 1.0]]),  # B: from 50
        torch.tensor([[120.0, 2.0]]),  # C: from 120
        torch.zeros(0, 2),  # D: never adversarial
    ]


def test_query_metrics_by_hand() -> None:
    # n_dims = 4, so MSE = L2² / 4: A 4 -> 1 at 100; B 6 -> 9, 1 -> 0.25; C 2 -> 1
    metrics, per_sample = query_metrics(
        handmade_traces(), 4, budgets=[500, 20, 100, 200, 100], mse_threshold=1.0, l2_threshold=1.5, reach=200
    )
    assert metrics["query_reach"] == 200
    assert list(metrics["median_mse_at"]) == ["20", "100", "200", "500"]  # sorted, de-duplicated, text keys
    # at 20 only A has one (L2 4, MSE 4): the median needs two more, so it is undefined
    # at 100: L2 (2, 6, inf, inf): the middle pair (6, inf) -> undefined; at 200: (1, 2, 2, inf) -> 2
    assert metrics["median_l2_at"] == {"20": None, "100": None, "200": 2.0, "500": None}
    assert metrics["median_mse_at"] == {"20": None, "100": None, "200": 1.0, "500": None}
    assert metrics["n_found_at"] == {"20": 1, "100": 2, "200": 3, "500": None}
    # geometric mean over the images that have an adversarial: 4; sqrt(1*9) = 3; (1*0.25*1)^(1/3)
    geo = metrics["geomean_mse_at"]
    assert geo["20"] == pytest.approx(4.0) and geo["100"] == pytest.approx(3.0)
    assert geo["200"] == pytest.approx(0.25 ** (1 / 3)) and geo["500"] is None
    # success: MSE <= 1 over all four attacked images (D never succeeds); L2 <= 1.5 only B at 200
    assert metrics["success_rate_at"] == {"20": 0.0, "100": 0.25, "200": 0.75, "500": None}
    assert metrics["success_rate_l2_at"] == {"20": 0.0, "100": 0.0, "200": 0.25, "500": None}
    assert per_sample["mse_at"]["20"] == [4.0, None, None, None]
    assert per_sample["mse_at"]["200"] == [1.0, 0.25, 1.0, None]
    assert per_sample["l2_at"]["100"] == [2.0, 6.0, None, None]
    assert per_sample["mse_at"]["500"] is None and per_sample["l2_at"]["500"] is None


def test_query_metrics_defaults_and_odd_counts() -> None:
    traces = handmade_traces()[:3]  # A, B, C: three images, odd count, nothing is inf at 150
    metrics, _ = query_metrics(traces, 4, budgets=[100, 150, 1000], mse_threshold=None)
    assert metrics["query_reach"] == 150  # by default: the largest query count in any trace
    # at 100: L2 (2, 6, inf) -> the middle one, 6, is defined; at 150: (1, 2, 2) -> 2
    assert metrics["median_l2_at"] == {"100": 6.0, "150": 2.0, "1000": None}
    assert metrics["success_rate_at"] is None and metrics["success_rate_l2_at"] is None  # no thresholds
    empty, per_sample = query_metrics([], 4, budgets=[10], reach=10)
    assert empty["median_mse_at"] == {"10": None} and empty["n_found_at"] == {"10": 0}
    assert empty["success_rate_at"] == {"10": None} and per_sample["mse_at"] == {"10": []}
    assert check_budgets(DEFAULT_BUDGETS) == [1000, 2000, 5000, 10000]
    for bad in ([0], [1.5], ["1000"], [math.inf], [True]):
        with pytest.raises(ConfigError, match="query budgets"):
            check_budgets(bad)  # type: ignore[arg-type]


class ScriptedAttack(Attack):
    """Returns the given traces (in order of the attacked images) and changes nothing."""

    access: ClassVar[Access] = "label"

    def __init__(self, traces: list[torch.Tensor] | None, budget: int = 300) -> None:
        self.traces = traces
        self.budget = budget

    def run(self, target: Any, x: torch.Tensor, y: torch.Tensor, *, targets: Any, starting_points: Any) -> AttackResult:
        zeros = torch.zeros(len(x), dtype=torch.long)
        trace = None if self.traces is None else self.traces[: len(x)]
        return AttackResult(x=x, x_adv=x.clone(), success=zeros.bool(), queries=zeros, trace=trace)


@pytest.fixture(scope="module")
def setup() -> tuple[Classifier, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5)), num_classes=5, input_shape=(3, 4, 4))
    x = torch.rand(5, 3, 4, 4)
    y = model.predict(x)
    y[1] = (y[1] + 1) % 5  # image 1 is misclassified: not attacked
    return model, x, y


def test_evaluate_fills_budget_metrics(setup: tuple[Classifier, torch.Tensor, torch.Tensor], tmp_path: Path) -> None:
    model, x, y = setup
    n_dims = 48
    ev = evaluate(
        model,
        ScriptedAttack(handmade_traces()),
        x,
        y,
        verbose=False,
        budgets=[100, 200, 300, 1000],
        mse_threshold=1.0 / n_dims,  # MSE <= 1/48 is L2 <= 1
        l2_threshold=2.0,
    )
    m = ev.metrics
    assert ev.traced and m["n_attacked"] == 4
    assert m["query_budgets"] == [100, 200, 300, 1000]
    assert m["mse_threshold"] == pytest.approx(1 / 48) and m["l2_threshold"] == 2.0
    # the attack's declared budget (300) is how far the run could go: 1000 is not measured
    assert m["query_reach"] == 300
    assert m["median_l2_at"] == {"100": None, "200": 2.0, "300": 2.0, "1000": None}
    assert m["median_mse_at"]["200"] == pytest.approx(4.0 / n_dims) and m["median_mse_at"]["1000"] is None
    assert m["success_rate_at"] == {"100": 0.0, "200": 0.25, "300": 0.25, "1000": None}
    assert m["success_rate_l2_at"] == {"100": 0.25, "200": 0.75, "300": 0.75, "1000": None}
    # per sample over all five images; image 1 was not attacked
    l2_at = ev.per_sample["l2_at"]
    assert l2_at["200"] == [2.0, None, 1.0, 2.0, None] and l2_at["1000"] is None
    assert ev.per_sample["mse_at"]["100"] == [pytest.approx(4 / n_dims), None, pytest.approx(36 / n_dims), None, None]
    assert "median MSE @ queries" in format_summary(
        {"dataset": "d", "model": "m", "attack": "a", "access": "label", "norm": "l2"}, m
    )

    # the traces artifact: written next to the record, and read back exactly
    artifacts = write_artifacts(tmp_path, ev, "scripted")
    assert artifacts["traces"] == TRACES_NAME and artifacts["plot"] == "distortion_vs_queries.png"
    assert (tmp_path / "distortion_vs_queries.png").stat().st_size > 1000
    stored = read_traces(tmp_path / TRACES_NAME)
    assert stored.index == [0, 2, 3, 4] and stored.n_dims == n_dims
    for got, want in zip(stored.traces, handmade_traces(), strict=True):
        assert got.dtype == torch.float64 and torch.equal(got, want.double())


def test_record_holds_metrics_and_traces(setup: tuple[Classifier, torch.Tensor, torch.Tensor], tmp_path: Path) -> None:
    model, x, y = setup
    attack = ScriptedAttack(handmade_traces(), budget=10_000)
    with RunRecorder({"attack": {"name": "scripted"}}, home=tmp_path) as recorder:
        ev = evaluate(model, attack, x, y, verbose=False)
        recorder.finish(ev, write_artifacts(recorder.run_dir, ev, "scripted"))
    record = read_record(recorder.run_dir)
    metrics = record["metrics"]
    assert metrics["query_budgets"] == [1000, 2000, 5000, 10000] and metrics["mse_threshold"] == 1e-3
    assert metrics["l2_threshold"] is None and metrics["success_rate_l2_at"] is None
    assert metrics["median_l2_at"] == {"1000": 2.0, "2000": 2.0, "5000": 2.0, "10000": 2.0}
    assert metrics["n_found_at"]["1000"] == 3
    assert record["per_sample"]["l2_at"]["1000"] == [2.0, None, 1.0, 2.0, None]  # inf and not-attacked -> null
    assert record["artifacts"]["traces"] == TRACES_NAME
    # the loader takes the record, the run directory, its record.json or the file itself
    for source in (record, recorder.run_dir, recorder.run_dir / "record.json", recorder.run_dir / TRACES_NAME):
        traces = load_traces(source)
        assert len(traces) == 4 and torch.equal(traces[1], handmade_traces()[1].double())
        assert len(traces[3]) == 0


def test_attacks_without_traces_have_no_budget_metrics(
    setup: tuple[Classifier, torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    model, x, y = setup
    ev = evaluate(model, ScriptedAttack(None), x, y, verbose=False)
    assert not ev.traced
    assert ev.metrics["median_mse_at"] is None and ev.metrics["success_rate_at"] is None
    assert ev.metrics["query_reach"] is None and ev.per_sample["mse_at"] is None
    artifacts = write_artifacts(tmp_path, ev, "scripted")
    assert "traces" not in artifacts and not (tmp_path / TRACES_NAME).exists()
    with pytest.raises(InputError, match="no traces artifact"):
        traces_path({"run_id": "r", "run_dir": str(tmp_path), "artifacts": artifacts})
    with pytest.raises(ConfigError, match="mse_threshold"):
        evaluate(model, ScriptedAttack(None), x, y, verbose=False, mse_threshold=-1.0)


def test_traces_file_round_trip_and_errors(tmp_path: Path) -> None:
    traces = [torch.tensor([[1.0, 3.0], [7.0, 2.5]], dtype=torch.float32), torch.zeros(0, 2), torch.tensor([[2.0, 9]])]
    path = write_traces(tmp_path / "t.safetensors", traces, [4, 0, 2], n_dims=784)
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]  # no temporary file left
    back = read_traces(path)
    assert back.index == [4, 0, 2] and back.n_dims == 784
    assert [t.tolist() for t in back.traces] == [t.tolist() for t in traces]
    assert read_traces(write_traces(tmp_path / "none.safetensors", [], [])).traces == []
    with pytest.raises(InputError, match="one index per trace"):
        write_traces(tmp_path / "x.safetensors", traces, [0])
    with pytest.raises(InputError, match=r"\(T, 2\)"):
        write_traces(tmp_path / "x.safetensors", [torch.zeros(3)], [0])
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="not a readable traces file"):
        read_traces(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError, match="no traces file"):
        read_traces(tmp_path / "missing.safetensors")


class MeasuredAttack(ScriptedAttack):
    """Reports one attack-specific metric, measured from what the pipeline passes in."""

    leaderboard_metrics: ClassVar[Mapping[str, str]] = {"fooling_rate": "fooling rate"}

    def __init__(self, key: str = "fooling_rate") -> None:
        super().__init__(None)
        self.key = key

    def extra_metrics(self, model: Any, x: Any, y: Any, x_adv: Any, attacked: Any, **_: Any) -> dict[str, float | None]:
        return {self.key: float(attacked.float().mean()), "not_a_number": float("nan")}


def test_extra_metrics_join_the_record_and_may_not_shadow_standard_ones(
    setup: tuple[Classifier, torch.Tensor, torch.Tensor],
) -> None:
    model, x, y = setup
    ev = evaluate(model, MeasuredAttack(), x, y, verbose=False)
    assert ev.metrics["fooling_rate"] == pytest.approx(4 / 5)  # image 1 is not attacked
    assert ev.metrics["not_a_number"] is None  # stored as missing, never as NaN
    names = {"dataset": "d", "model": "m", "attack": "a", "access": "label", "norm": "l2"}
    assert re.search(
        r"^fooling_rate +0\.8$", format_summary(names, ev.metrics, ev.metric_titles), re.M
    )  # printed after the run
    with pytest.raises(ConfigError, match="success_rate"):
        evaluate(model, MeasuredAttack("success_rate"), x, y, verbose=False)

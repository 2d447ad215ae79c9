"""Plots and image grids: the numbers behind them, and that they write real PNG files."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from advsuite.errors import InputError
from advsuite.plots import (
    distance_at_queries,
    plot_distortion_vs_queries,
    plot_robust_accuracy,
    quantiles_with_inf,
    save_image_grid,
    trace_quantiles,
    visible_perturbation,
)

INF = math.inf


def assert_png(path: Path) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    with Image.open(path) as image:
        return image.size


def test_distance_at_queries_is_a_step_function() -> None:
    # unsorted on purpose; two records at 20 queries: the later one (2.5) wins
    trace = torch.tensor([[20.0, 3.0], [10.0, 5.0], [20.0, 2.5], [40.0, 1.0]])
    trace = trace[[1, 0, 2, 3]]
    grid = torch.tensor([0.0, 9.0, 10.0, 15.0, 20.0, 39.0, 40.0, 100.0])
    got = distance_at_queries(trace, grid)
    assert got.dtype == torch.float64
    assert got.tolist() == [INF, INF, 5.0, 5.0, 2.5, 2.5, 1.0, 1.0]
    with pytest.raises(InputError, match=r"\(T, 2\)"):
        distance_at_queries(torch.zeros(3), grid)


def test_trace_quantiles_by_hand() -> None:
    traces = [
        torch.tensor([[0.0, 4.0], [10.0, 2.0]]),
        torch.tensor([[0.0, 8.0], [10.0, 6.0]]),
        torch.tensor([[5.0, 10.0]]),  # no adversarial before 5 queries
        torch.zeros(0, 2),  # nothing recorded: left out
    ]
    q = trace_quantiles(traces, torch.tensor([0.0, 5.0, 10.0]))
    # at 0: sorted (4, 8, inf); at 5: (4, 8, 10); at 10: (2, 6, 10); linear interpolation, n = 3
    expected = torch.tensor(
        [
            [6.0, 6.0, 4.0],  # 25%: halfway between the 1st and 2nd
            [8.0, 8.0, 6.0],  # median: the 2nd
            [INF, 9.0, 8.0],  # 75%: halfway between the 2nd and 3rd; undefined while the 3rd has none
        ],
        dtype=torch.float64,
    )
    assert torch.equal(q, expected)
    finite = torch.tensor([2.0, 6.0, 10.0], dtype=torch.float64)
    assert torch.allclose(q[:, 2], torch.quantile(finite, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)))
    assert torch.isnan(trace_quantiles([torch.zeros(0, 2)], torch.tensor([1.0]))).all()


def test_empty_traces_as_inf_and_quantiles_with_inf() -> None:
    traces = [torch.tensor([[0.0, 4.0]]), torch.tensor([[0.0, 8.0]]), torch.zeros(0, 2)]
    grid = torch.tensor([1.0])
    # left out by default: median of (4, 8) = 6; as never-adversarial images: (4, 8, inf) -> 8
    assert trace_quantiles(traces, grid, (0.5,)).item() == 6.0
    assert trace_quantiles(traces, grid, (0.5,), empty_as_inf=True).item() == 8.0
    assert trace_quantiles(traces, grid, (0.75,), empty_as_inf=True).item() == INF
    values = torch.tensor([[3.0, INF], [1.0, 2.0], [INF, INF], [2.0, 1.0]])
    got = quantiles_with_inf(values, (0.0, 0.5, 1.0))
    # columns sorted: (1, 2, 3, inf) and (1, 2, inf, inf); the median interpolates the middle pair
    assert got.tolist() == [[1.0, 1.0], [2.5, INF], [INF, INF]]
    assert quantiles_with_inf(torch.tensor([5.0, 1.0, 3.0]), (0.5,)).tolist() == [[3.0]]  # 1-D: one column
    assert torch.isnan(quantiles_with_inf(torch.zeros(0, 2), (0.5,))).all()


def test_plot_distortion_vs_queries(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)

    def fake_trace(rate: float) -> torch.Tensor:
        queries = torch.cumsum(torch.randint(1, 20, (30,), generator=gen), 0).double()
        return torch.stack([queries, 10.0 * torch.exp(-rate * queries / 100)], dim=1)

    traces = {"qeba": [fake_trace(1.0) for _ in range(5)], "hsja": [fake_trace(0.5) for _ in range(5)]}
    assert_png(plot_distortion_vs_queries(traces, tmp_path / "l2.png", title="MNIST"))
    assert_png(plot_distortion_vs_queries(traces, tmp_path / "mse.png", metric="mse", n_dims=784))
    with_line = plot_distortion_vs_queries(
        {**traces, "none found": [torch.zeros(0, 2)]}, tmp_path / "t.png", threshold=0.5, empty_as_inf=True
    )
    assert_png(with_line)
    with pytest.raises(InputError, match="n_dims"):
        plot_distortion_vs_queries(traces, tmp_path / "x.png", metric="mse")
    with pytest.raises(InputError, match="metric"):
        plot_distortion_vs_queries(traces, tmp_path / "x.png", metric="l7")


def test_plot_robust_accuracy(tmp_path: Path) -> None:
    path = plot_robust_accuracy([0.0, 0.1, 0.2, 0.3], [0.99, 0.9, None, 0.2], tmp_path / "sub" / "acc.png", "pgd")
    assert path == tmp_path / "sub" / "acc.png"
    assert_png(path)
    with pytest.raises(InputError):
        plot_robust_accuracy([0.1, 0.2], [0.5], tmp_path / "bad.png")


def test_visible_perturbation() -> None:
    x = torch.full((2, 1, 2, 2), 0.5)
    x_adv = x.clone()
    x_adv[0, 0, 0, 0] += 0.1
    x_adv[0, 0, 1, 1] -= 0.05
    shown = visible_perturbation(x, x_adv)
    assert torch.allclose(shown[0, 0], torch.tensor([[1.0, 0.5], [0.5, 0.25]]))
    assert torch.equal(shown[1], torch.full((1, 2, 2), 0.5))  # unchanged image: uniform grey


@pytest.mark.parametrize("channels", [1, 3])
def test_save_image_grid(tmp_path: Path, channels: int) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(10, channels, 12, 12, generator=gen)
    x_adv = (x + 0.05 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    width, height = assert_png(save_image_grid(x, x_adv, tmp_path / "grid.png", n=4))
    assert width > height  # 4 columns, 3 rows
    with pytest.raises(InputError):
        save_image_grid(x, x_adv[:, :, :6], tmp_path / "bad.png")

"""Plots and image grids written next to a run's record (PNG).

Figures are drawn on matplotlib's Agg canvas directly, without pyplot, so importing this module
never changes the backend of a notebook or GUI session that imports advsuite, and nothing is shown.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from advsuite.errors import InputError

#: quantiles drawn by :func:`plot_distortion_vs_queries`: the band and the line
QUANTILES = (0.25, 0.5, 0.75)


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Save as PNG through a temporary file, so a crash never leaves a truncated image."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def plot_robust_accuracy(
    eps: Sequence[float],
    acc: Sequence[float | None],
    path: str | os.PathLike[str],
    title: str = "",
) -> Path:
    """Robust accuracy (in %) against epsilon; missing (``None``/NaN) points are skipped."""
    if len(eps) != len(acc):
        raise InputError(f"eps has {len(eps)} values but acc has {len(acc)}; give one accuracy per epsilon")
    points = sorted((float(e), float(a)) for e, a in zip(eps, acc, strict=True) if a is not None and math.isfinite(a))
    fig = Figure(figsize=(5, 3.5))
    ax = fig.add_subplot()
    if points:
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, [100 * y for y in ys], marker="o")
    ax.set_xlabel("epsilon")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def distance_at_queries(trace: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """The distance reached after each query count in ``grid``: a step function of the trace.

    ``trace`` is (T, 2) of (queries so far, distance). At ``q`` the value is the last recorded
    distance with queries ≤ q; before the first record the attack has no adversarial yet, so the
    distance is ``inf``. Unsorted traces are sorted by queries first (stable, so for equal counts
    the later record wins). Returns float64, shape ``grid.shape``.
    """
    if trace.ndim != 2 or trace.shape[1] != 2:
        raise InputError(f"a trace is a (T, 2) tensor of (queries, distance); got shape {tuple(trace.shape)}")
    trace = trace.detach().to("cpu", torch.float64)
    grid = grid.detach().to("cpu", torch.float64)
    order = torch.sort(trace[:, 0], stable=True).indices
    queries, dist = trace[order, 0].contiguous(), trace[order, 1]
    last = torch.searchsorted(queries, grid.contiguous(), right=True) - 1
    out = torch.full(grid.shape, math.inf, dtype=torch.float64)
    seen = last >= 0
    out[seen] = dist[last[seen]]
    return out


def trace_quantiles(
    traces: Sequence[torch.Tensor],
    grid: torch.Tensor,
    quantiles: Sequence[float] = QUANTILES,
    *,
    empty_as_inf: bool = False,
) -> torch.Tensor:
    """Quantiles over images of the distance at each grid point: (len(quantiles), len(grid)).

    Empty traces (nothing recorded, e.g. images the model already misclassified) are left out,
    unless ``empty_as_inf``: then they are images the attack never found an adversarial for, ``inf``
    everywhere (use it when every trace belongs to an attacked image, as in a run's traces artifact).
    Linear interpolation between order statistics, as ``torch.quantile``, except that a quantile
    touching an image with no adversarial yet (``inf``) is ``inf``: it is undefined, not large.
    """
    rows = [distance_at_queries(t, grid) for t in traces if empty_as_inf or len(t)]
    if not rows:
        return torch.full((len(quantiles), len(grid)), math.nan, dtype=torch.float64)
    return quantiles_with_inf(torch.stack(rows), quantiles)


def quantiles_with_inf(values: torch.Tensor, quantiles: Sequence[float] = QUANTILES) -> torch.Tensor:
    """Quantiles along dim 0 of ``values`` (images, k) that may hold ``inf``: (len(quantiles), k).

    Linear interpolation between order statistics, as ``torch.quantile`` (and NumPy's default), with
    ``inf`` sorting last; a quantile that touches an ``inf`` is ``inf`` (torch would give NaN). With
    no rows every quantile is NaN.
    """
    values = values.to(torch.float64)
    if values.ndim == 1:
        values = values[:, None]
    n = values.shape[0]
    if n == 0:
        return torch.full((len(quantiles), values.shape[1]), math.nan, dtype=torch.float64)
    values = values.sort(dim=0).values  # inf sorts last
    out = []
    for q in quantiles:
        pos = q * (n - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        w = pos - lo
        a, b = values[lo], values[hi]
        # spelled out because inf - inf is NaN in torch.quantile's interpolation
        out.append(torch.where(torch.isinf(b), b, a + w * (b - a)) if w > 0 else a)
    return torch.stack(out)


def plot_distortion_vs_queries(
    traces_by_method: Mapping[str, Sequence[torch.Tensor]],
    path: str | os.PathLike[str],
    metric: str = "l2",
    *,
    n_dims: int | None = None,
    grid: torch.Tensor | None = None,
    title: str = "",
    threshold: float | None = None,
    empty_as_inf: bool = False,
) -> Path:
    """Median distance (line) and interquartile band over images against queries, log-scale y.

    All methods share one query grid (by default 256 steps up to the largest query count seen), and
    each trace is read as a step function (:func:`distance_at_queries`). ``metric="mse"`` converts
    the traced L2 to per-pixel MSE, ``l2**2 / n_dims`` (``n_dims`` = C·H·W), as in the QEBA paper.
    Where fewer than half the images have an adversarial yet, the median is undefined and not drawn.
    ``threshold`` (in the plotted metric) draws a dashed horizontal line, e.g. the success threshold.
    ``empty_as_inf`` counts empty traces as images never made adversarial (see :func:`trace_quantiles`).
    """
    if metric not in ("l2", "mse"):
        raise InputError(f"metric must be 'l2' or 'mse', got {metric!r}")
    if metric == "mse" and not n_dims:
        raise InputError("metric='mse' needs n_dims (the number of input values, C*H*W)")
    if grid is None:
        top = max((float(t[:, 0].max()) for ts in traces_by_method.values() for t in ts if len(t)), default=1.0)
        grid = torch.linspace(0.0, max(top, 1.0), 257, dtype=torch.float64)
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    xs = grid.double().numpy()
    for method, traces in traces_by_method.items():
        q = trace_quantiles(traces, grid, empty_as_inf=empty_as_inf)
        if metric == "mse":
            q = q.pow(2) / float(n_dims or 1)
        # matplotlib leaves gaps at NaN; inf (undefined) and non-positive values cannot go on a log axis
        ys = torch.where(torch.isfinite(q) & (q > 0), q, torch.full_like(q, math.nan)).numpy()
        (line,) = ax.plot(xs, ys[1], label=method)
        ax.fill_between(xs, ys[0], ys[2], color=line.get_color(), alpha=0.2, linewidth=0)
    if threshold is not None and math.isfinite(threshold) and threshold > 0:
        ax.axhline(threshold, color="grey", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    ax.set_yscale("log", nonpositive="mask")
    ax.set_xlabel("queries")
    ax.set_ylabel(("per-pixel MSE" if metric == "mse" else "L2 distance") + " (median, quartile band)")
    ax.grid(alpha=0.3, which="both")
    if traces_by_method or threshold is not None:
        ax.legend()
    if title:
        ax.set_title(title)
    return _save(fig, path)


def visible_perturbation(x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """``0.5 + delta / (2 * max|delta|)`` per image: grey = unchanged, white/black = largest change.

    An image with no change at all stays uniformly grey.
    """
    delta = (x_adv - x).float()
    scale = delta.flatten(1).abs().amax(dim=1).clamp_min(1e-12).view(-1, *([1] * (delta.ndim - 1)))
    return 0.5 + delta / (2 * scale)


def save_image_grid(
    x: torch.Tensor,
    x_adv: torch.Tensor,
    path: str | os.PathLike[str],
    n: int = 8,
    rows: tuple[str, str, str] = ("original", "adversarial", "perturbation"),
) -> Path:
    """Save the first ``n`` images as three rows: originals, adversarials, perturbations (``rows`` names them).

    Inputs are (N, C, H, W) in [0, 1] with C = 1 (grayscale) or 3 (RGB). The perturbation
    ``x_adv - x`` is rescaled per image to be visible: ``0.5 + delta / (2 * max|delta|)``, so grey is
    no change, and white/black are the largest increase/decrease in that image. The true Linf size
    is written above each perturbation, because the rescaling hides it.
    """
    if x.shape != x_adv.shape or x.ndim != 4 or x.shape[1] not in (1, 3):
        raise InputError(
            f"x and x_adv must both be (N, C, H, W) with C = 1 or 3; got {tuple(x.shape)} and {tuple(x_adv.shape)}"
        )
    n = min(n, len(x))
    if n < 1:
        raise InputError("save_image_grid needs at least one image")
    x = x[:n].detach().to("cpu", torch.float32)
    x_adv = x_adv[:n].detach().to("cpu", torch.float32)
    delta = x_adv - x
    shown = visible_perturbation(x, x_adv)
    fig = Figure(figsize=(1.4 * n, 4.6))
    axes = fig.subplots(3, n, squeeze=False)
    for row, (name, images) in enumerate(zip(rows, (x, x_adv, shown), strict=True)):
        for col in range(n):
            ax = axes[row][col]
            image = images[col].clamp(0, 1)  # display only: matplotlib warns on values outside [0, 1]
            if image.shape[0] == 1:
                ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(name)
            if row == 2:
                ax.set_title(f"Linf {float(delta[col].abs().max()):.3g}", fontsize=8)
    return _save(fig, path)

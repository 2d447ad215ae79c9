"""The HSJA-style loop shared by HSJA, QEBA, NonLinear-BA and PSBA, batched over images and probes.

Chen, Jordan, Wainwright, "HopSkipJumpAttack", IEEE S&P 2020 (arXiv 1904.02144), as generalised by the
QEBA / NonLinear-BA / PSBA authors (``BAPP_custom``), who only swap the probe generator. Per iteration t:

1. delta: 0.1 x (pixel range) at t = 1, then sqrt(d)·theta·dist (L2) or d·theta·dist (Linf);
2. gradient-direction estimate from probes u_b around the boundary point x_t (normalised, clipped, then
   u_b recomputed as (clip(x_t + delta·u_b) - x_t) / delta), with baseline subtraction;
3. geometric step-size search: eps = dist / sqrt(t), halved until the step lands adversarial;
4. binary search between x0 and the new point back to the boundary (threshold theta).

All images advance in lock-step, but each only queries what it needs: converged images drop out of a
search, and every image stops at its own budget. Every model evaluation goes through the
:class:`~advsuite.oracles.LabelOracle` (start checks, noise search, blend search, probes, step tries,
binary search). The point returned for an image is always one the oracle answered as adversarial.

Where we differ from the reference code: the number of probes in an iteration is cut to what the
image's budget leaves after reserving one binary search and one step try (the authors stop by iteration
count); the step-size search gives up after ``max_halvings`` halvings and keeps x_t (the reference
loops until success, which near-degenerate boundaries can turn into an endless loop).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from advsuite.errors import ConfigError, InputError
from advsuite.oracles import LabelOracle, is_adversarial

from .probes import ProbeGenerator
from .streams import image_generators

CONSTANT_SETS = ("hsja", "qeba")
PROBE_SCHEDULES = ("sqrt", "constant")


@dataclass(frozen=True)
class LoopSettings:
    """Hyper-parameters of the loop (see the module docstring and ``HSJA``'s fields)."""

    norm: str = "l2"
    constants: str = "hsja"
    gamma: float = 1.0
    num_probes: int = 100
    probe_schedule: str = "sqrt"
    max_probes: int = 10000
    iterations: int | None = None
    init_tries: int = 1000
    blend_tolerance: float = 1e-3
    max_halvings: int = 30

    def theta(self, d: int) -> float:
        """Binary-search threshold: HSJA gamma / d^1.5 (L2), gamma / d^2 (Linf); QEBA gamma / sqrt(d), gamma / d."""
        if self.constants == "hsja":
            return self.gamma / (d * math.sqrt(d)) if self.norm == "l2" else self.gamma / d**2
        return self.gamma / math.sqrt(d) if self.norm == "l2" else self.gamma / d

    def probes_at(self, t: int) -> int:
        if self.probe_schedule == "sqrt":
            return int(min(self.num_probes * math.sqrt(t), self.max_probes))
        return self.num_probes


class _Run:
    """Per-image state of one call: boundary points, best verified adversarials, traces, stop reasons."""

    def __init__(
        self,
        oracle: LabelOracle,
        x0: torch.Tensor,
        y: torch.Tensor,
        targets: torch.Tensor | None,
        seed: int,
    ) -> None:
        self.oracle, self.x0, self.y, self.targets = oracle, x0, y, targets
        self.lo, self.hi = (float(b) for b in oracle.bounds)
        n = len(x0)
        self.gens = image_generators(seed, x0)
        self.active = torch.ones(n, dtype=torch.bool, device=x0.device)
        self.x_t = x0.clone()
        self.best = x0.clone()
        self.best_l2 = torch.full((n,), math.inf, device=x0.device)
        self.found = torch.zeros(n, dtype=torch.bool, device=x0.device)
        self.reason = ["running"] * n
        self.iterations = torch.zeros(n, dtype=torch.long)
        self._trace: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def stop(self, idx: torch.Tensor, reason: str) -> None:
        idx = idx[self.active[idx]]
        self.active[idx] = False
        for i in idx.tolist():
            self.reason[i] = reason

    def query(self, points: torch.Tensor, owners: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(adversarial, answered) per row; an image with an unanswered row has spent its budget."""
        labels, answered = self.oracle(points, owners)
        targets = None if self.targets is None else self.targets[owners]
        adv = is_adversarial(labels, self.y[owners], targets) & answered
        if not answered.all():
            self.stop(owners[~answered].unique(), "budget")
        return adv, answered

    def clip(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(self.lo, self.hi)

    def record(self, idx: torch.Tensor, points: torch.Tensor) -> None:
        """``points`` were answered adversarial for images ``idx``: keep the closest, extend the traces."""
        l2 = (points - self.x0[idx]).flatten(1).norm(dim=1)
        better = l2 < self.best_l2[idx]
        self.best[idx[better]] = points[better]
        self.best_l2[idx[better]] = l2[better]
        self.found[idx] = True
        self.mark(idx)

    def mark(self, idx: torch.Tensor) -> None:
        self._trace.append((idx.cpu(), self.oracle.n_queries[idx].cpu().double(), self.best_l2[idx].cpu().double()))

    def traces(self) -> list[torch.Tensor]:
        """Per image, (queries, L2 of the best verified adversarial) at every improvement."""
        rows: list[list[torch.Tensor]] = [[] for _ in range(len(self.x0))]
        last = [math.inf] * len(self.x0)
        for idx, queries, l2 in self._trace:
            for k, i in enumerate(idx.tolist()):
                if float(l2[k]) < last[i]:  # only improvements: the trace is read as a step function
                    last[i] = float(l2[k])
                    rows[i].append(torch.stack([queries[k], l2[k]]))
        return [torch.stack(r) if r else torch.empty(0, 2, dtype=torch.float64) for r in rows]


def distance(a: torch.Tensor, b: torch.Tensor, norm: str) -> torch.Tensor:
    delta = (a - b).flatten(1)
    return delta.norm(dim=1) if norm == "l2" else delta.abs().amax(dim=1)


def _view(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def boundary_search(
    run: _Run, idx: torch.Tensor, adv_points: torch.Tensor, theta: float, norm: str, tolerance: float | None = None
) -> torch.Tensor:
    """Binary search between x0 and adversarial points towards the boundary; returns the adversarial side.

    L2 searches the blend (1 - a)·x0 + a·x_adv over a in [0, 1], Linf the box radius around x0 over
    [0, ||x_adv - x0||_inf]; a search stops when (high - low) / threshold <= 1, with threshold theta (L2)
    or min(dist·theta, theta) (Linf). ``tolerance`` instead stops at high - low <= tolerance (the blend
    search of the untargeted initialisation). Every returned row was answered adversarial.
    """
    x0 = run.x0[idx]
    result = adv_points.clone()
    n = len(idx)
    low = torch.zeros(n, device=x0.device)
    if norm == "l2" or tolerance is not None:
        high = torch.ones(n, device=x0.device)
        threshold = torch.full((n,), tolerance if tolerance is not None else theta, device=x0.device)
    else:
        high = distance(adv_points, x0, "linf")
        threshold = torch.clamp(high * theta, max=theta)
    blend = norm == "l2" or tolerance is not None
    while True:
        need = run.active[idx] & ((high - low) > threshold)
        if not need.any():
            return result
        j = need.nonzero().squeeze(1)
        mid = (high[j] + low[j]) / 2
        if blend:
            points = torch.lerp(x0[j], adv_points[j], _view(mid))
        else:
            points = torch.minimum(torch.maximum(adv_points[j], x0[j] - _view(mid)), x0[j] + _view(mid))
        adv, answered = run.query(points, idx[j])
        high[j[adv]] = mid[adv]
        result[j[adv]] = points[adv]
        low[j[~adv & answered]] = mid[~adv & answered]


def initialise(run: _Run, starting_points: torch.Tensor | None, settings: LoopSettings, theta: float) -> None:
    """Starting points (checked with one query each) or uniform noise + blend search, then the boundary."""
    n = len(run.x0)
    everyone = torch.arange(n, device=run.x0.device)
    if starting_points is not None:
        start = starting_points.to(run.x0.device)
        adv, answered = run.query(start, everyone)
        run.stop(everyone[~adv & answered], "starting point not adversarial")
        found = adv
    else:
        start = run.x0.clone()
        found = torch.zeros(n, dtype=torch.bool, device=run.x0.device)
        for _ in range(settings.init_tries):
            j = (~found & run.active).nonzero().squeeze(1)
            if not len(j):
                break
            noise = torch.stack(
                [torch.rand(run.x0.shape[1:], generator=run.gens[i], device=run.x0.device) for i in j.tolist()]
            )
            noise = noise * (run.hi - run.lo) + run.lo
            adv, _ = run.query(noise, j)
            start[j[adv]] = noise[adv]
            found[j[adv]] = True
        run.stop(everyone[~found], "no adversarial noise found")
        live = run.active.nonzero().squeeze(1)
        start[live] = boundary_search(run, live, start[live], theta, settings.norm, settings.blend_tolerance)
    run.record(everyone[found], start[found])
    live = run.active.nonzero().squeeze(1)
    run.x_t[found] = start[found]
    run.x_t[live] = boundary_search(run, live, start[live], theta, settings.norm)
    run.record(live, run.x_t[live])


def estimate_direction(
    run: _Run,
    idx: torch.Tensor,
    n_probes: torch.Tensor,
    delta: torch.Tensor,
    probes: ProbeGenerator,
    max_rows: int,
) -> torch.Tensor:
    """Unit gradient-direction estimates at x_t for images ``idx`` (zero where nothing was answered).

    With p_b = clip(x_t + delta·u_b) the clipped probe, HSJA's estimate mean_b v_b·(p_b - x_t)/delta is,
    up to the positive factor 1/delta that the normalisation removes, sum_b v_b·p_b - x_t·sum_b v_b.
    """
    x0, x_t = run.x0, run.x_t
    c, h, w = x0.shape[1:]
    shape = (c, h, w)
    grads = torch.zeros((len(idx), *shape), device=x0.device)
    counts = n_probes.tolist()
    start = 0
    while start < len(idx):  # groups of images whose probes fit in about max_rows rows
        stop, rows = start, 0
        while stop < len(idx) and (stop == start or rows + counts[stop] <= max_rows):
            rows += counts[stop]
            stop += 1
        local = torch.repeat_interleave(
            torch.arange(stop - start, device=x0.device), n_probes[start:stop].to(x0.device)
        )
        images = idx[start:stop]
        codes = [
            probes.draw_for(i, counts[k], x_t[i : i + 1], x0[i : i + 1], run.gens[i])
            for k, i in enumerate(images.tolist(), start)
        ]
        u = probes.decode(torch.cat(codes), shape)
        u = u / _view(u.flatten(1).norm(dim=1).clamp_min(1e-12))
        points = run.clip(torch.addcmul(x_t[images][local], _view(delta[start:stop][local]), u))
        adv, answered = run.query(points, images[local])
        f = (adv.float() * 2 - 1) * answered
        total = torch.zeros(stop - start, device=x0.device).index_add_(0, local, answered.float())
        mean = torch.zeros(stop - start, device=x0.device).index_add_(0, local, f) / total.clamp_min(1)
        plain = mean.abs() == 1  # all probes on one side: no baseline (HSJA: +-mean(u))
        v = torch.where(plain[local], f, f - mean[local]) * answered
        weighted = torch.zeros((stop - start, *shape), device=x0.device).index_add_(0, local, points * _view(v))
        sum_v = torch.zeros(stop - start, device=x0.device).index_add_(0, local, v)
        grads[start:stop] = weighted - x_t[images] * _view(sum_v)
        start = stop
    return grads / _view(grads.flatten(1).norm(dim=1).clamp_min(1e-12))


def step_size_search(
    run: _Run, idx: torch.Tensor, update: torch.Tensor, eps: torch.Tensor, max_halvings: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Geometric progression: try x_t + eps·update, halve eps until adversarial. Returns (points, accepted)."""
    points = run.x_t[idx].clone()
    accepted = torch.zeros(len(idx), dtype=torch.bool, device=idx.device)
    pending = torch.ones(len(idx), dtype=torch.bool, device=idx.device)
    eps = eps.clone()
    for _ in range(max_halvings + 1):
        j = (pending & run.active[idx]).nonzero().squeeze(1)
        if not len(j):
            break
        tries = run.clip(run.x_t[idx[j]] + _view(eps[j]) * update[j])
        adv, answered = run.query(tries, idx[j])
        points[j[adv]] = tries[adv]
        accepted[j[adv]] = True
        pending[j[adv | ~answered]] = False
        eps[j[~adv]] /= 2
    return points, accepted


def hsja_loop(
    oracle: LabelOracle,
    x: torch.Tensor,
    y: torch.Tensor,
    targets: torch.Tensor | None,
    starting_points: torch.Tensor | None,
    probes: ProbeGenerator,
    settings: LoopSettings,
    seed: int,
    on_iteration: Callable[[], None] | None = None,
) -> _Run:
    """Run the loop on a batch; returns the per-image state (best points, traces, stop reasons)."""
    if settings.iterations is None and oracle.budget is None:
        raise ConfigError("a decision-based attack needs a query budget or a number of iterations")
    if len(oracle.n_queries) != len(x):
        raise InputError(f"the oracle serves {len(oracle.n_queries)} samples but {len(x)} images were given")
    if targets is not None and starting_points is None:
        raise InputError(
            "a targeted decision-based attack starts from images of the target class: pass starting_points= "
            "(e.g. correctly classified test images of each target)"
        )
    run = _Run(oracle, x, y, targets, seed)
    d = int(x[0].numel())
    theta = settings.theta(d)
    reserve = math.ceil(math.log2(1 / theta)) + 1 if theta < 1 else 2  # one binary search and one step try
    initialise(run, starting_points, settings, theta)
    max_rows = max(oracle.max_batch, settings.max_probes if settings.probe_schedule == "sqrt" else settings.num_probes)
    t = 0
    while run.active.any():
        t += 1
        if settings.iterations is not None and t > settings.iterations:
            run.stop(run.active.nonzero().squeeze(1), "iterations")
            break
        idx = run.active.nonzero().squeeze(1)
        n_probes = torch.clamp(oracle.remaining[idx] - reserve, max=settings.probes_at(t))
        short = n_probes < 2
        run.stop(idx[short], "budget")
        idx, n_probes = idx[~short], n_probes[~short]
        if not len(idx):
            break
        dist = distance(run.x_t[idx], run.x0[idx], settings.norm)
        if t == 1:
            delta = torch.full_like(dist, 0.1 * (run.hi - run.lo))
        else:
            delta = dist * theta * (math.sqrt(d) if settings.norm == "l2" else d)
        grad = estimate_direction(run, idx, n_probes, delta.clamp_min(1e-12), probes, max_rows)
        update = grad if settings.norm == "l2" else grad.sign()
        points, accepted = step_size_search(run, idx, update, dist / math.sqrt(t), settings.max_halvings)
        moved = idx[accepted]
        run.x_t[moved] = boundary_search(run, moved, points[accepted], theta, settings.norm)
        run.iterations[idx.cpu()] += 1
        run.record(moved, run.x_t[moved])
        run.mark(idx[~accepted])
        probes.adapt(idx, distance(run.x_t[idx], run.x0[idx], settings.norm))
        if on_iteration is not None:
            on_iteration()
    return run

"""Square Attack (Linf), score-based.

Andriushchenko, Croce, Flammarion, Hein, "Square Attack: a query-efficient black-box adversarial attack via
random search", ECCV 2020 (arXiv 1912.00049), Algorithm 1 with the Linf proposal (Algorithm 2):

    x⁰ = clip(x + ε · vertical stripes)            (one random sign per column and channel)
    each iteration: a random square window of side s = round(√(p · h · w)); inside it every channel is set to
                    x ± ε (one random sign per channel); the proposal is kept if it lowers the loss

The loss is the margin ``log p_y − max_{j≠y} log p_j`` untargeted (it equals the logit margin) and the
cross-entropy of the target when targeted; a sample stops once it is adversarial. The window's area
fraction ``p`` starts at ``p_init`` and is halved at iterations 10, 50, 200, 500, 1k, 2k, 4k, 6k and 8k of a
10k-query run, rescaled to the budget (the authors' schedule). A proposal whose window would not change the
image (every value already there, e.g. clipped at the bounds) gets new signs, up to 10 redraws, as in the
authors' code.

The attack only sees the :class:`ScoreOracle`'s probabilities and every proposal is a counted query (one
more for the start). Differences from the authors' code: windows and signs are drawn per image (their
AutoAttack port draws one window per batch); only the Linf proposal is implemented (the L2 one is not: use
APGD for L2); there are no restarts (AutoAttack's standard version runs one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from advsuite.attack import Access, AttackResult, FixedEpsilonAttack
from advsuite.errors import ConfigError
from advsuite.oracles import ScoreOracle
from advsuite.seeding import make_generator
from advsuite.validation import check_flags, check_int, check_number

#: iterations (of a 10k-query run) after which p halves
SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def window_fraction(p_init: float, iteration: int, budget: int) -> float:
    """The share p of the image a square covers at ``iteration`` of a ``budget``-query run."""
    it = int(iteration / budget * 10000)
    return p_init / 2 ** sum(it > mark for mark in SCHEDULE)


def margin_and_loss(
    probs: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(margin, loss) per row, both to minimise; margin < 0 means adversarial."""
    logp = probs.clamp_min(1e-38).log()
    label = targets if targets is not None else y
    own = logp.gather(1, label[:, None]).squeeze(1)
    other = logp.scatter(1, label[:, None], float("-inf")).amax(1)
    if targets is not None:
        return other - own, -own  # targeted: cross-entropy of the target
    return own - other, own - other


@dataclass
class Square(FixedEpsilonAttack):
    """Square Attack, Andriushchenko et al. ECCV 2020 (Linf, score-based, one epsilon)."""

    access: ClassVar[Access] = "score"

    norm: str = "linf"
    eps: float | list[float] = 8 / 255
    budget: int | None = 5000
    p_init: float = 0.8
    targeted: bool = False
    seed: int = 0
    max_batch: int = 1000

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if self.norm != "linf":
            raise ConfigError(f"{owner}: only norm=linf is implemented (got {self.norm!r}); use attack=apgd for L2")
        self._normalise_eps()
        if len(self.epsilons) != 1:
            raise ConfigError(f"{owner}: takes one eps (the query budget is per image), got {self.eps!r}")
        check_int(owner, "budget", self.budget, 1)
        check_number(owner, "p_init", self.p_init)
        if self.p_init > 1:
            raise ConfigError(f"{owner}: p_init is a share of the image, in (0, 1]; got {self.p_init!r}")
        check_int(owner, "max_batch", self.max_batch, 1)
        check_flags(owner, self, "targeted")

    def run(
        self,
        target: ScoreOracle,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        targets: torch.Tensor | None,
        starting_points: torch.Tensor | None,
    ) -> AttackResult:
        eps, budget = self.epsilons[0], int(self.budget or 10000)
        gen = make_generator(self.seed, x.device)
        n, (c, h, w) = len(x), x.shape[1:]
        lo, hi = target.bounds
        stripes = torch.randint(0, 2, (n, c, 1, w), generator=gen, device=x.device).to(x.dtype) * 2 - 1
        best = (x + eps * stripes).clamp(lo, hi)
        probs, answered = target(best)
        margin, loss = margin_and_loss(probs, y, targets)
        margin[~answered], loss[~answered] = math.inf, math.inf
        rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        corners = torch.stack([(x - eps).clamp(lo, hi), (x + eps).clamp(lo, hi)], 2)  # (n, c, 2, h, w): x ∓ ε
        for i in range(1, budget):
            active = ((margin >= 0) & (target.remaining > 0)).nonzero().squeeze(1)
            if len(active) == 0:
                break
            s = min(max(round(math.sqrt(window_fraction(self.p_init, i, budget) * h * w)), 1), h, w)
            every = len(active) == n  # no copies while every image is still being attacked
            ca, ba, ya = (corners, best, y) if every else (corners[active], best[active], y[active])
            ta = targets if targets is None or every else targets[active]
            proposal = self.propose(ca, ba, s, rows, cols, gen)
            probs, answered = target(proposal, active)
            new_margin, new_loss = margin_and_loss(probs, ya, ta)
            better = answered & ((new_loss < loss[active]) | (new_margin < 0))
            keep = active[better]
            best[keep], loss[keep], margin[keep] = proposal[better], new_loss[better], new_margin[better]
        return AttackResult(
            x=x,
            x_adv=best,
            success=margin < 0,
            queries=target.n_queries.clone(),
            epsilons=self.epsilons,
            x_adv_by_eps=[best],
            success_by_eps=(margin < 0)[None],
        )

    @staticmethod
    def propose(
        corners: torch.Tensor,
        best: torch.Tensor,
        side: int,
        rows: torch.Tensor,
        cols: torch.Tensor,
        gen: torch.Generator,
    ) -> torch.Tensor:
        """``best`` with one random square per image set to x ± ε per channel (``corners``: x − ε and x + ε,
        clipped, stacked on dim 2), with new signs where the draw changes nothing."""
        n, c, _, h, w = corners.shape
        top = torch.randint(0, h - side + 1, (n,), generator=gen, device=best.device)
        left = torch.randint(0, w - side + 1, (n,), generator=gen, device=best.device)
        inside_r = (rows[None] >= top[:, None]) & (rows[None] < top[:, None] + side)
        inside_c = (cols[None] >= left[:, None]) & (cols[None] < left[:, None] + side)
        window = (inside_r[:, :, None] & inside_c[:, None, :])[:, None]  # (n, 1, h, w)
        # the authors redraw the signs (up to 10 times) until the window changes the image: the same draws,
        # vectorised. Channel c's window moves with sign s if any of its pixels does; a draw moves the image
        # if any channel does.
        moved = ((corners - best[:, :, None]).abs() > 1e-7).logical_and_(window[:, :, None]).flatten(3).any(3)
        draws = torch.randint(0, 2, (n, 11, c), generator=gen, device=best.device)  # the first and 10 redraws
        moves = moved[:, None].expand(n, 10, c, 2).gather(3, draws[:, :10, :, None]).squeeze(3).any(2)  # (n, 10)
        first = torch.where(moves.any(1), moves.int().argmax(1), 10)  # none moved: the last draw, unchecked
        signs = draws[torch.arange(n, device=best.device), first]  # (n, c): 0 is −, 1 is +
        chosen = corners.gather(2, signs[:, :, None, None, None].expand(n, c, 1, h, w)).squeeze(2)
        return torch.where(window, chosen, best)

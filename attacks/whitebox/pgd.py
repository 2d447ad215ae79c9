"""Projected gradient descent (PGD).

Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models Resistant to Adversarial
Attacks", ICLR 2018 (arXiv 1706.06083).

For each epsilon, PGD maximises the loss inside the ε-ball around ``x`` by iterating

    x⁰     = x + uniform noise in the ball               (random start)
    xᵗ⁺¹   = Π_{B(x, ε) ∩ [0, 1]} ( xᵗ + α · dir(∇ₓ L(f(xᵗ), y)) )

with ``dir = sign`` for Linf and ``dir = g / ‖g‖₂`` for L2, and keeps the last iterate.

``eps`` may be a list: the epsilons are sorted ascending and each is its own run (all starting from
the same seed), so a multi-ε call returns what separate single-ε calls return; ``x_adv``/``success``
are those of the largest ε.

Defaults and where they differ from the paper:

- ``steps=40`` with a random start, as in the paper's MNIST attack (their CIFAR attack used 7 steps).
- step size ``α = 2.5 · ε / steps`` (the rule of Madry et al.'s ``robustness`` library), for every ε of a
  multi-ε call; the paper's MNIST attack used a fixed ``α = 0.01`` for ``ε = 0.3`` (≈ 1.33 · ε / steps).
  Set ``step_size`` (absolute; it takes precedence) or ``rel_stepsize`` (a fraction of ε) to change it.
- ``restarts``: restarts after the first only attack the samples no earlier restart fooled; per sample
  we keep the first successful restart, or the one with the highest final loss when none succeeds.
- ``loss="margin"`` replaces cross-entropy with the Carlini–Wagner margin (max other logit − true logit).

Queries: every gradient step is one forward+backward pass and counts as one query; each restart ends
with one forward pass that checks success (one more query). A sample attacked with E epsilons and R
restarts is therefore charged ``Σ_eps Σ_restarts-run (steps + 1)`` queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from advsuite.attack import Access, AttackResult, FixedEpsilonAttack
from advsuite.errors import ConfigError
from advsuite.models.classifier import Classifier
from advsuite.seeding import make_generator
from advsuite.validation import check_choice, check_flags, check_number

NORMS = ("linf", "l2")
LOSSES = ("ce", "margin")


# ----------------------------------------------------------------------------------- validation


# ----------------------------------------------------------------------------------- the pieces


def objective(logits: torch.Tensor, labels: torch.Tensor, *, targeted: bool, loss: str) -> torch.Tensor:
    """Per-sample value the attack maximises.

    Untargeted: CE(logits, y) or the margin ``max_{j≠y} z_j − z_y``. Targeted (``labels`` are the
    targets): −CE(logits, t) or ``z_t − max_{j≠t} z_j``.
    """
    if loss == "ce":
        ce = F.cross_entropy(logits, labels, reduction="none")
        return -ce if targeted else ce
    own = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.scatter(1, labels[:, None], float("-inf")).amax(1)
    return own - other if targeted else other - own


def ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent direction of unit norm: sign (Linf) or the L2-normalised gradient."""
    if norm == "linf":
        return grad.sign()
    return grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (grad.dim() - 1))


def random_start(
    x: torch.Tensor, eps: float, norm: str, gen: torch.Generator, bounds: tuple[float, float]
) -> torch.Tensor:
    """A point drawn uniformly from the ε-ball around ``x`` (Linf cube or L2 ball), clipped to the bounds."""
    if norm == "linf":
        noise = (2 * torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) - 1) * eps
    else:
        direction = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
        u = torch.rand(len(x), generator=gen, device=x.device, dtype=x.dtype)
        radius = eps * u.pow(1.0 / x[0].numel())  # uniform in the ball: P(r <= s) = (s / eps)^d
        noise = direction * radius.view(-1, *[1] * (x.dim() - 1))
    return (x + noise).clamp(*bounds)


def projector(x: torch.Tensor, eps: float, norm: str, bounds: tuple[float, float]) -> Any:
    """``project(x_adv)``: onto the ε-ball around ``x``, then into the bounds (which keeps it in the ball)."""
    if norm == "linf":
        lower, upper = (x - eps).clamp_min(bounds[0]), (x + eps).clamp_max(bounds[1])
        return lambda x_adv: x_adv.clamp(lower, upper)

    def project_l2(x_adv: torch.Tensor) -> torch.Tensor:
        delta = x_adv - x
        factor = (eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp_max(1.0)
        return (x + delta * factor.view(-1, *[1] * (x.dim() - 1))).clamp(*bounds)

    return project_l2


@torch.no_grad()
def check(
    model: Classifier, x_adv: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None, loss: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass: (success, final objective) per sample."""
    logits = model(x_adv)
    labels = targets if targets is not None else y
    pred = logits.argmax(1)
    success = pred == targets if targets is not None else pred != y
    return success, objective(logits, labels, targeted=targets is not None, loss=loss)


# ----------------------------------------------------------------------------------- the attack


@dataclass
class PGD(FixedEpsilonAttack):
    """Projected gradient descent, Madry et al. ICLR 2018 (Linf and L2; one or several epsilons)."""

    access: ClassVar[Access] = "whitebox"

    norm: str = "linf"
    eps: float | list[float] = 0.3
    steps: int = 40
    #: absolute step size α; takes precedence over ``rel_stepsize``
    step_size: float | None = None
    #: α as a fraction of ε; ``None`` → 2.5 / steps
    rel_stepsize: float | None = None
    random_start: bool = True
    restarts: int = 1
    loss: str = "ce"
    targeted: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_choice(owner, "norm", self.norm, NORMS)
        check_choice(owner, "loss", self.loss, LOSSES)
        self._normalise_eps()
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"{owner}: steps must be an integer >= 1, got {self.steps!r}")
        if not isinstance(self.restarts, int) or self.restarts < 1:
            raise ConfigError(f"{owner}: restarts must be an integer >= 1, got {self.restarts!r}")
        check_number(owner, "step_size", self.step_size)
        check_number(owner, "rel_stepsize", self.rel_stepsize)
        check_flags(owner, self, "random_start", "targeted")
        if self.restarts > 1 and not self.random_start:
            raise ConfigError(f"{owner}: restarts > 1 needs random_start=true (otherwise every restart is identical)")

    def alpha(self, eps: float) -> float:
        """The step size used for ``eps``."""
        if self.step_size is not None:
            return float(self.step_size)
        rel = self.rel_stepsize if self.rel_stepsize is not None else 2.5 / self.steps
        return float(rel) * eps

    def run(
        self,
        target: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        targets: torch.Tensor | None,
        starting_points: torch.Tensor | None,
    ) -> AttackResult:
        with target.trusted_inputs():  # x was checked by Attack.__call__
            return self.run_each_eps(
                x,
                lambda eps, queries: self._attack_eps(target, x, y, targets, eps, queries),
                extras={"step_sizes": [self.alpha(eps) for eps in self.epsilons], "restarts": self.restarts},
            )

    def _attack_eps(
        self,
        model: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        targets: torch.Tensor | None,
        eps: float,
        queries: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All restarts at one epsilon; every epsilon starts from the same seed (so a multi-ε call
        gives exactly the results of separate single-ε calls)."""
        gen = make_generator(self.seed, x.device)
        best = x.clone()
        best_success = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        best_value = torch.full((len(x),), float("-inf"), device=x.device)
        for restart in range(self.restarts):
            active = (~best_success).nonzero().squeeze(1) if restart else torch.arange(len(x), device=x.device)
            if len(active) == 0:
                break
            xa, ya = x[active], y[active]
            ta = targets[active] if targets is not None else None
            x_adv = self.perturb(model, xa, ya, ta, eps, gen)
            success, value = check(model, x_adv, ya, ta, self.loss)
            queries[active] += self.steps + 1
            # keep the first successful restart, else the highest final loss
            better = success | (~best_success[active] & (value > best_value[active]))
            keep = active[better]
            best[keep] = x_adv[better]
            best_success[keep] = success[better]
            best_value[keep] = value[better]
        return best, best_success

    def perturb(
        self,
        model: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        targets: torch.Tensor | None,
        eps: float,
        gen: torch.Generator,
    ) -> torch.Tensor:
        """One PGD run from one (random) start: the Madry et al. loop."""
        bounds = model.bounds
        labels = targets if targets is not None else y
        targeted = targets is not None
        alpha = self.alpha(eps)
        project = projector(x, eps, self.norm, bounds)
        x_adv = random_start(x, eps, self.norm, gen, bounds) if self.random_start and eps > 0 else x.clone()
        with torch.enable_grad():
            for _ in range(self.steps):
                x_adv.requires_grad_(True)
                loss = objective(model(x_adv), labels, targeted=targeted, loss=self.loss).sum()
                (grad,) = torch.autograd.grad(loss, x_adv)
                x_adv = project(x_adv.detach() + alpha * ascent_direction(grad, self.norm))
        return x_adv.detach()

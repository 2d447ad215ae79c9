"""Auto-PGD (APGD-CE, APGD-DLR) and its targeted sweep APGD-T.

Croce, Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
attacks", ICML 2020 (arXiv 2003.01690), Algorithm 1. PGD with momentum whose step size needs no tuning:

    η⁰ = 2ε;  z = Π(xᵏ + ηᵏ · dir(∇L(xᵏ)));  xᵏ⁺¹ = Π(xᵏ + α(z − xᵏ) + (1 − α)(xᵏ − xᵏ⁻¹)),  α = 0.75

At the checkpoints w_j = ⌈p_j · N⌉ (p₀ = 0, p₁ = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)) the step
size of a sample is halved, and it restarts from the best point so far, when (1) its loss rose in fewer than
ρ = 0.75 of the steps since the last checkpoint, or (2) its step size was not halved at the last checkpoint and
its best loss has not improved since. ``dir`` is sign (Linf) or the L2-normalised gradient (L2).

Losses: ``ce`` (cross-entropy) and ``dlr``, the Difference of Logits Ratio, invariant to shifting and scaling
the logits (so a model whose softmax saturates cannot hide its gradient from it):

    DLR(z, y)     = −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3 + 1e-12)
    DLR_T(z, y, t) = −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e-12)

with π the logits sorted descending. :class:`APGDT` (AutoAttack's ``apgd-t``) is untargeted: it runs the
targeted DLR towards each of the ``n_target_classes`` classes the clean image scores highest after its own,
on the samples still robust. ``eot_iter`` > 1 averages the gradient over that many forward/backward passes
(Expectation over Transformation, for randomized defenses; AutoAttack's ``rand`` version uses 20).

Each sample returns the first adversarial point found on the path (never a later, non-adversarial iterate:
no silent success) or, when none is found, the point of highest loss. Queries: one per forward/backward
pass (``eot_iter`` per step and one for the start), for every restart and target class a sample is
attacked with. As in the authors' code, restarts and target classes only attack samples still robust.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from advsuite.attack import Access, AttackResult, FixedEpsilonAttack
from advsuite.errors import ConfigError
from advsuite.models.classifier import Classifier
from advsuite.seeding import make_generator
from advsuite.validation import check_choice, check_flags, check_int, check_number

from .pgd import NORMS, ascent_direction, projector

APGD_LOSSES = ("ce", "dlr")


def dlr_loss(logits: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample DLR loss (to maximise); targeted DLR towards ``targets`` when given."""
    ordered = logits.sort(dim=1, descending=True).values
    own = logits.gather(1, y[:, None]).squeeze(1)
    if targets is not None:
        scale = ordered[:, 0] - 0.5 * (ordered[:, 2] + ordered[:, 3]) + 1e-12
        return -(own - logits.gather(1, targets[:, None]).squeeze(1)) / scale
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return -(own - other) / (ordered[:, 0] - ordered[:, 2] + 1e-12)


def apgd_loss(logits: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None, loss: str) -> torch.Tensor:
    """Per-sample objective APGD maximises: CE of the truth (or −CE of the target), or DLR / targeted DLR."""
    if loss == "dlr":
        return dlr_loss(logits, y, targets)
    if targets is not None:
        return -F.cross_entropy(logits, targets, reduction="none")
    return F.cross_entropy(logits, y, reduction="none")


def checkpoints(steps: int) -> list[int]:
    """The iterations w_j at which APGD may halve its step size (p₁ = 0.22, then growing by ≥ 0.06)."""
    p = [0, 22]  # in hundredths, so that 0.22 + 0.19 is exactly 0.41
    while p[-1] < 100:
        p.append(p[-1] + max(p[-1] - p[-2] - 3, 6))
    marks = (math.ceil(q * steps / 100) for q in p[1:])
    return sorted({w for w in marks if w < steps})


def _min_classes(loss: str, targeted: bool) -> int:
    return 4 if loss == "dlr" and targeted else 3 if loss == "dlr" else 2


@dataclass
class _AutoPGD(FixedEpsilonAttack):
    """What APGD and APGD-T share: the options and Algorithm 1."""

    access: ClassVar[Access] = "whitebox"

    norm: str = "linf"
    eps: float | list[float] = 8 / 255
    steps: int = 100
    restarts: int = 1
    loss: str = "ce"
    #: the fraction of loss-increasing steps below which the step size is halved (ρ)
    rho: float = 0.75
    #: gradients averaged per step (Expectation over Transformation; 1 = none)
    eot_iter: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_choice(owner, "norm", self.norm, NORMS)
        check_choice(owner, "loss", self.loss, APGD_LOSSES)
        self._normalise_eps()
        check_int(owner, "steps", self.steps, 1)
        check_int(owner, "restarts", self.restarts, 1)
        check_int(owner, "eot_iter", self.eot_iter, 1)
        check_number(owner, "rho", self.rho, low=0.0, strict=False)

    def run(
        self,
        target: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        targets: torch.Tensor | None,
        starting_points: torch.Tensor | None,
    ) -> AttackResult:
        self._check_classes(target.num_classes, targets is not None)
        with target.trusted_inputs():  # x was checked by Attack.__call__
            return self.run_each_eps(x, lambda eps, queries: self.attack_eps(target, x, y, targets, eps, queries))

    def _check_classes(self, num_classes: int, targeted: bool) -> None:
        need = _min_classes(self.loss, targeted)
        if num_classes < need:
            kind = "targeted DLR" if targeted and self.loss == "dlr" else self.loss.upper()
            raise ConfigError(f"{type(self).__name__}: the {kind} loss needs at least {need} classes, the model has "
                              f"{num_classes}; use loss=ce")  # fmt: skip

    def attack_eps(
        self,
        model: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        targets: torch.Tensor | None,
        eps: float,
        queries: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All restarts at one epsilon (each epsilon starts from the same seed)."""
        best, fooled = x.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
        best_loss = torch.full((len(x),), float("-inf"), device=x.device)
        self.restarts_on(
            model, x, y, targets, eps, make_generator(self.seed, x.device), queries, best, fooled, best_loss
        )
        return best, fooled

    def restarts_on(
        self,
        model: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        targets: torch.Tensor | None,
        eps: float,
        gen: torch.Generator,
        queries: torch.Tensor,
        best: torch.Tensor,
        fooled: torch.Tensor,
        best_loss: torch.Tensor,
    ) -> None:
        """``restarts`` runs on the images not yet fooled, keeping in place each image's first adversarial point
        (or its highest-loss one) in ``best``, ``fooled`` and ``best_loss``."""
        for _ in range(self.restarts):
            active = (~fooled).nonzero().squeeze(1)
            if len(active) == 0:
                break
            ta = targets[active] if targets is not None else None
            x_adv, success, loss = self.perturb(model, x[active], y[active], ta, eps, gen)
            queries[active] += (self.steps + 1) * self.eot_iter
            better = success | (loss > best_loss[active])
            keep = active[better]
            best[keep], fooled[keep], best_loss[keep] = x_adv[better], success[better], loss[better]

    def value_and_grad(
        self, model: Classifier, x_adv: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, per-sample loss, gradient), the gradient averaged over ``eot_iter`` passes."""
        grad = torch.zeros_like(x_adv)
        with torch.enable_grad():
            for _ in range(self.eot_iter):
                xg = x_adv.clone().requires_grad_(True)
                logits = model(xg)
                loss = apgd_loss(logits, y, targets, self.loss)
                grad += torch.autograd.grad(loss.sum(), xg)[0]
        return logits.detach(), loss.detach(), grad / self.eot_iter

    def perturb(
        self,
        model: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        targets: torch.Tensor | None,
        eps: float,
        gen: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One APGD run (Algorithm 1): returns (point, adversarial?, its loss) per sample."""
        n, view = len(x), (-1, *[1] * (x.dim() - 1))
        project = projector(x, eps, self.norm, model.bounds)
        x_adv = project(x + eps * self.start_direction(x, gen))
        logits, loss, grad = self.value_and_grad(model, x_adv, y, targets)
        fooled = self.is_fooled(logits, y, targets)
        found = x_adv.clone()  # the first adversarial point of each sample
        x_best, loss_best, grad_best = x_adv.clone(), loss.clone(), grad.clone()
        step = torch.full((n,), 2.0 * eps, device=x.device)
        marks = set(checkpoints(self.steps))
        last_mark, rises = 0, torch.zeros(n, device=x.device)
        loss_best_at_mark, halved_at_mark = loss_best.clone(), torch.ones(n, dtype=torch.bool, device=x.device)
        x_prev = x_adv.clone()
        for i in range(self.steps):
            alpha = 0.75 if i > 0 else 1.0
            z = project(x_adv + step.view(view) * ascent_direction(grad, self.norm))
            x_new = project(x_adv + alpha * (z - x_adv) + (1 - alpha) * (x_adv - x_prev))
            x_prev, x_adv = x_adv, x_new
            logits, new_loss, grad = self.value_and_grad(model, x_adv, y, targets)
            newly = self.is_fooled(logits, y, targets) & ~fooled
            found[newly], fooled = x_adv[newly], fooled | newly
            rises += (new_loss > loss).float()
            loss = new_loss
            improved = loss > loss_best
            x_best[improved], loss_best[improved], grad_best[improved] = x_adv[improved], loss[improved], grad[improved]
            if i + 1 in marks:
                oscillating = rises <= self.rho * (i + 1 - last_mark)
                stuck = ~halved_at_mark & (loss_best_at_mark >= loss_best)
                halve = oscillating | stuck
                step[halve] /= 2
                x_adv[halve], grad[halve] = x_best[halve], grad_best[halve]
                halved_at_mark, loss_best_at_mark = halve, loss_best.clone()
                last_mark, rises = i + 1, torch.zeros(n, device=x.device)
        out = torch.where(fooled.view(view), found, x_best)
        return out, fooled, loss_best

    def start_direction(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """A random start of norm ε (per unit of ε): the authors' ``t / max|t|`` (Linf) or ``t / ‖t‖₂`` (L2)."""
        if self.norm == "l2":
            t = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
            return t / t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
        t = 2 * torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) - 1
        return t / t.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))

    @staticmethod
    def is_fooled(logits: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        pred = logits.argmax(1)
        return pred == targets if targets is not None else pred != y


@dataclass
class APGD(_AutoPGD):
    """Auto-PGD, Croce & Hein ICML 2020 (Linf and L2; CE or DLR loss; one or several epsilons)."""

    targeted: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_flags(type(self).__name__, self, "targeted")


@dataclass
class APGDT(_AutoPGD):
    """APGD-T (AutoAttack's ``apgd-t``): untargeted success through targeted DLR runs towards the top classes.

    For each sample the classes are ranked by the clean logits; the k-th run (k = 1 … ``n_target_classes``)
    aims at the class ranked k + 1 (the best-scoring class that is not the prediction first), on the samples
    no earlier run fooled. AutoAttack's standard version uses 9 target classes and 100 steps.
    """

    loss: str = "dlr"
    n_target_classes: int = 9

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        check_int(owner, "n_target_classes", self.n_target_classes, 1)

    def attack_eps(
        self,
        model: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        targets: torch.Tensor | None,
        eps: float,
        queries: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            ranked = model(x).argsort(dim=1, descending=True)
        queries += 1
        best, fooled = x.clone(), ranked[:, 0] != y  # a clean misclassification needs no attack
        best_loss = torch.full((len(x),), float("-inf"), device=x.device)
        for k in range(1, min(self.n_target_classes, model.num_classes - 1) + 1):
            if bool(fooled.all()):
                break
            gen = make_generator(self.seed + k, x.device)
            self.restarts_on(model, x, y, ranked[:, k], eps, gen, queries, best, fooled, best_loss)
        return best, fooled

    @staticmethod
    def is_fooled(logits: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        return logits.argmax(1) != y  # success is any misclassification, whatever class a run aims at

    def _check_classes(self, num_classes: int, targeted: bool) -> None:
        if num_classes < 4:
            raise ConfigError(f"APGDT: the targeted DLR loss needs at least 4 classes, the model has {num_classes}")

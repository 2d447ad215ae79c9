"""Fast gradient sign method (FGSM) and its L2 variant, the fast gradient method (FGM).

Goodfellow, Shlens, Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015
(arXiv 1412.6572): one step of size ε along the sign of the loss gradient,

    x_adv = clip_[0, 1]( x + ε · sign(∇ₓ L(f(x), y)) )            (norm="linf", FGSM)
    x_adv = clip_[0, 1]( x + ε · ∇ₓ L / ‖∇ₓ L‖₂ )                 (norm="l2",  FGM)

Targeted: the step descends the cross-entropy of the target class. The gradient does not depend on
ε, so a call with several epsilons computes it once. Queries per sample: one forward+backward pass
for the gradient plus one forward pass per epsilon to check success.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from advsuite.attack import Access, AttackResult, FixedEpsilonAttack
from advsuite.models.classifier import Classifier
from advsuite.validation import check_choice, check_flags

from .pgd import LOSSES, NORMS, ascent_direction, check, objective


@dataclass
class FGSM(FixedEpsilonAttack):
    """FGSM (Linf) / FGM (L2), Goodfellow et al. ICLR 2015."""

    access: ClassVar[Access] = "whitebox"

    norm: str = "linf"
    eps: float | list[float] = 0.3
    loss: str = "ce"
    targeted: bool = False

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_choice(owner, "norm", self.norm, NORMS)
        check_choice(owner, "loss", self.loss, LOSSES)
        self._normalise_eps()
        check_flags(owner, self, "targeted")

    def run(
        self,
        target: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        targets: torch.Tensor | None,
        starting_points: torch.Tensor | None,
    ) -> AttackResult:
        epsilons = self.epsilons
        labels = targets if targets is not None else y
        with target.trusted_inputs():  # x was checked by Attack.__call__
            with torch.enable_grad():
                x_grad = x.clone().requires_grad_(True)
                loss = objective(target(x_grad), labels, targeted=targets is not None, loss=self.loss).sum()
                (grad,) = torch.autograd.grad(loss, x_grad)
            direction = ascent_direction(grad, self.norm)
            by_eps = [(x + eps * direction).clamp(*target.bounds) for eps in epsilons]
            success_by_eps = [check(target, x_adv, y, targets, self.loss)[0] for x_adv in by_eps]
        largest = max(range(len(epsilons)), key=lambda i: epsilons[i])
        return AttackResult(
            x=x,
            x_adv=by_eps[largest],
            success=success_by_eps[largest],
            queries=torch.full((len(x),), 1 + len(epsilons), dtype=torch.long, device=x.device),
            epsilons=epsilons,
            x_adv_by_eps=by_eps,
            success_by_eps=torch.stack(success_by_eps),
        )

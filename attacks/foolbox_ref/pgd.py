"""PGD through foolbox 3.3.4 (``LinfPGD`` / ``L2PGD``), as a cross-check for the native :class:`PGD`.

Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models Resistant to Adversarial
Attacks", ICLR 2018 (arXiv 1706.06083).

foolbox runs each epsilon separately: random start, ``steps`` gradient steps of size
``rel_stepsize · ε`` (or ``step_size``), projection and clipping, then one forward pass on the result
to decide success. Defaults are foolbox's: ``rel_stepsize=None`` means 0.01/0.3 for Linf (Madry et
al.'s MNIST setting) and 0.025 for L2; ``steps`` defaults to 40. foolbox draws its random start from
torch's global generator, so we seed it from ``seed`` (and restore it afterwards).

Queries per sample: ``(steps + 1)`` per epsilon (forward+backward per step, one final check).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import foolbox as fb
import torch

from advsuite.attack import Access, AttackResult, FixedEpsilonAttack
from advsuite.errors import ConfigError
from advsuite.models.classifier import Classifier
from advsuite.validation import check_choice, check_flags, check_number

from ..whitebox.pgd import NORMS
from .adapter import seeded


@dataclass
class FoolboxPGD(FixedEpsilonAttack):
    """foolbox's LinfPGD / L2PGD (Madry et al. ICLR 2018) on the Classifier."""

    access: ClassVar[Access] = "whitebox"

    norm: str = "linf"
    eps: float | list[float] = 0.3
    steps: int = 40
    #: absolute step size (foolbox's ``abs_stepsize``); takes precedence over ``rel_stepsize``
    step_size: float | None = None
    #: step size as a fraction of ε; ``None`` → foolbox's default (0.01/0.3 Linf, 0.025 L2)
    rel_stepsize: float | None = None
    random_start: bool = True
    targeted: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_choice(owner, "norm", self.norm, NORMS)
        self._normalise_eps()
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"{owner}: steps must be an integer >= 1, got {self.steps!r}")
        check_number(owner, "step_size", self.step_size)
        check_number(owner, "rel_stepsize", self.rel_stepsize)
        check_flags(owner, self, "random_start", "targeted")

    def foolbox_attack(self) -> fb.attacks.base.FixedEpsilonAttack:
        kwargs: dict[str, Any] = {"steps": self.steps, "random_start": self.random_start}
        if self.rel_stepsize is not None:
            kwargs["rel_stepsize"] = float(self.rel_stepsize)
        if self.step_size is not None:
            kwargs["abs_stepsize"] = float(self.step_size)
        return fb.attacks.LinfPGD(**kwargs) if self.norm == "linf" else fb.attacks.L2PGD(**kwargs)

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
        fmodel = fb.PyTorchModel(target, bounds=target.bounds, device=target.device)
        criterion: Any = (
            fb.criteria.TargetedMisclassification(targets) if targets is not None else fb.criteria.Misclassification(y)
        )
        with target.trusted_inputs(), seeded(self.seed, x.device):  # x was checked by Attack.__call__
            _, clipped, success = self.foolbox_attack()(fmodel, x, criterion, epsilons=epsilons)
        largest = max(range(len(epsilons)), key=lambda i: epsilons[i])
        return AttackResult(
            x=x,
            x_adv=clipped[largest],
            success=success[largest],
            queries=torch.full((len(x),), (self.steps + 1) * len(epsilons), dtype=torch.long, device=x.device),
            epsilons=epsilons,
            x_adv_by_eps=list(clipped),
            success_by_eps=success,
        )

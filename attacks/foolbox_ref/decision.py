"""Shared driver of the foolbox decision-based attacks (HSJA, Boundary) behind a :class:`LabelOracle`."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

import foolbox as fb
import torch
from tqdm.auto import tqdm

from advsuite.attack import Access, Attack, AttackResult
from advsuite.errors import InputError
from advsuite.oracles import LabelOracle
from advsuite.validation import check_flags, check_int

from .adapter import OracleAdapter, OracleSpent, seeded


def default_init_attack() -> fb.attacks.LinearSearchBlendedUniformNoiseAttack:
    """foolbox's own fallback initialisation, passed explicitly (foolbox logs a message per call otherwise)."""
    return fb.attacks.LinearSearchBlendedUniformNoiseAttack(steps=50)


@dataclass
class FoolboxDecisionAttack(Attack):
    """Runs a foolbox decision-based attack whose model is an :class:`OracleAdapter`.

    ``budget`` and ``max_batch`` are read by the pipeline to build the :class:`LabelOracle` (queries per
    image, rows per forward); the attack itself only sees the oracle. With ``per_image`` true, foolbox is
    called once per image; otherwise once for the whole batch (foolbox's lock-step batching: every
    forward charges each image of the batch one query). Called directly, the oracle passed in decides
    the budget. foolbox's global random generators are seeded from ``seed`` once per call.
    """

    access: ClassVar[Access] = "label"

    budget: int | None = 1000
    max_batch: int = 1000
    per_image: bool = True
    targeted: bool = False
    seed: int = 0
    verbose: bool = True

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if self.budget is not None:
            check_int(owner, "budget", self.budget, 1)
        check_int(owner, "max_batch", self.max_batch, 1)
        check_flags(owner, self, "per_image", "targeted", "verbose")

    @abc.abstractmethod
    def foolbox_attack(self) -> fb.attacks.base.MinimizationAttack:
        """The configured foolbox attack."""

    def run(
        self,
        target: LabelOracle,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        targets: torch.Tensor | None,
        starting_points: torch.Tensor | None,
    ) -> AttackResult:
        name = type(self).__name__
        if len(target.n_queries) != len(x):
            raise InputError(f"{name}: the oracle serves {len(target.n_queries)} samples but {len(x)} were given")
        if targets is not None and starting_points is None:
            raise InputError(
                f"{name} is targeted: pass starting_points= (one image per attacked image that the model "
                "classifies as its target class, e.g. a correctly classified test image of that class)"
            )
        if starting_points is not None:
            starting_points = starting_points.to(x.device)
        adapter = OracleAdapter(target, x, y, targets, norm=self.norm).eval()
        fmodel = fb.PyTorchModel(adapter, bounds=target.bounds, device=target.device)
        attack = self.foolbox_attack()
        errors: dict[int, str] = {}
        spent = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        everything = torch.arange(len(x), device=x.device)
        groups = list(everything.split(1)) if self.per_image else [everything]
        with seeded(self.seed, x.device):
            for images in tqdm(groups, desc=name, disable=not self.verbose or len(groups) == 1, leave=False):
                adapter.focus(images)
                labels = targets[images] if targets is not None else y[images]
                criterion: Any = (
                    fb.criteria.TargetedMisclassification(labels)
                    if targets is not None
                    else fb.criteria.Misclassification(labels)
                )
                start = starting_points[images] if starting_points is not None else None
                try:
                    attack.run(fmodel, x[images], criterion, starting_points=start)
                except OracleSpent:
                    spent[images] = True
                except (ValueError, AssertionError) as exc:  # foolbox: init failed / not adversarial
                    for i in images.tolist():
                        errors[i] = f"{type(exc).__name__}: {exc}"
        return AttackResult(
            x=x,
            x_adv=adapter.best,
            success=adapter.found.clone(),
            queries=target.n_queries.clone(),
            trace=adapter.trace(),
            extras={"per_image": self.per_image, "stopped_by_budget": spent, "foolbox_errors": errors},
        )

"""AutoAttack: a parameter-free ensemble run in cascade.

Croce, Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
attacks", ICML 2020. Each attack only sees the points every earlier one left robust, so the cascade costs
little more than its first attack on a non-robust model, and the robust accuracy is the share that
survives all of them.

``version``:

- ``standard``: APGD-CE, APGD-T (targeted DLR towards the 9 runner-up classes), Square (5,000 queries),
  100 steps and one restart each. The authors' standard version also runs FAB-T between APGD-T and Square;
  we do not implement FAB (it rarely finds points APGD-T misses: the authors' own tables show it lowering
  robust accuracy by at most 0.1 points on their models). Square is Linf-only here, so L2 runs APGD-CE and
  APGD-T only.
- ``rand``: APGD-CE and APGD-DLR with ``eot_iter`` (20) gradients averaged per step, for randomized
  defenses (the authors' ``rand`` version).
- ``custom``: the attacks listed in ``attacks`` (any of ``apgd-ce``, ``apgd-dlr``, ``apgd-t``, ``square``).

The record carries the robust accuracy after each stage (``robust_after_<attack>``, over the attacked
images) so it shows which attack found the points. Queries add up over the stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from advsuite.attack import Access, Attack, AttackResult, FixedEpsilonAttack
from advsuite.errors import ConfigError
from advsuite.models.classifier import Classifier
from advsuite.oracles import ScoreOracle
from advsuite.validation import check_choice, check_int

from .apgd import APGD, APGDT

STAGES = ("apgd-ce", "apgd-dlr", "apgd-t", "square")
VERSIONS: dict[str, tuple[str, ...]] = {
    "standard": ("apgd-ce", "apgd-t", "square"),
    "rand": ("apgd-ce", "apgd-dlr"),
}


@dataclass
class AutoAttack(FixedEpsilonAttack):
    """AutoAttack (Croce & Hein, ICML 2020): APGD-CE → APGD-T → Square in cascade, or its ``rand`` version."""

    access: ClassVar[Access] = "whitebox"

    norm: str = "linf"
    eps: float | list[float] = 8 / 255
    version: str = "standard"
    attacks: list[str] | None = None
    steps: int = 100
    n_target_classes: int = 9
    square_queries: int = 5000
    #: gradients per step in the ``rand`` version (1 in the others)
    eot_iter: int = 20
    seed: int = 0
    #: robust counts after each stage, summed over the batches of the last evaluation
    _after: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _attacked: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_choice(owner, "version", self.version, (*VERSIONS, "custom"))
        check_choice(owner, "norm", self.norm, ("linf", "l2"))
        self._normalise_eps()
        check_int(owner, "steps", self.steps, 1)
        check_int(owner, "n_target_classes", self.n_target_classes, 1)
        check_int(owner, "square_queries", self.square_queries, 1)
        check_int(owner, "eot_iter", self.eot_iter, 1)
        if self.version == "custom":
            if not self.attacks:
                raise ConfigError(f"{owner}: version=custom needs attacks=[...], from {', '.join(STAGES)}")
            for name in self.attacks:
                check_choice(owner, "attacks", name, STAGES)
        elif self.attacks:
            raise ConfigError(f"{owner}: attacks= is for version=custom; version={self.version} runs "
                              f"{', '.join(VERSIONS[self.version])}")  # fmt: skip
        if self.norm != "linf" and "square" in (self.attacks or ()):
            raise ConfigError(f"{owner}: Square is Linf-only here; drop it from attacks for norm={self.norm}")

    @property
    def stages(self) -> list[str]:
        names = list(self.attacks or VERSIONS[self.version])
        return [s for s in names if s != "square" or self.norm == "linf"]

    def stage(self, name: str, eps: float) -> Attack:
        """The attack of one stage, at one epsilon, with the version's settings."""
        eot = self.eot_iter if self.version == "rand" else 1
        common: dict[str, Any] = {"norm": self.norm, "eps": eps, "steps": self.steps, "seed": self.seed}
        if name == "apgd-ce":
            return APGD(loss="ce", eot_iter=eot, **common)
        if name == "apgd-dlr":
            return APGD(loss="dlr", eot_iter=eot, **common)
        if name == "apgd-t":
            return APGDT(n_target_classes=self.n_target_classes, eot_iter=eot, **common)
        from advsuite.attacks.score import Square

        return Square(eps=eps, budget=self.square_queries, seed=self.seed)

    def run(
        self,
        target: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        targets: torch.Tensor | None,
        starting_points: torch.Tensor | None,
    ) -> AttackResult:
        with torch.no_grad(), target.trusted_inputs():
            clean_wrong = target(x).argmax(1) != y
        self._attacked += len(x)

        def cascade(eps: float, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """Each stage attacks only the points every earlier stage left robust."""
            x_adv, fooled = x.clone(), clean_wrong.clone()
            for name in self.stages:
                todo = (~fooled).nonzero().squeeze(1)
                if len(todo):
                    result = self.run_stage(name, eps, target, x[todo], y[todo])
                    queries[todo] += result.queries.to(queries.device)
                    hit = todo[result.success.bool()]
                    x_adv[hit], fooled[hit] = result.x_adv[result.success.bool()], True
                if eps == self.epsilons[-1]:
                    self._after[name] = self._after.get(name, 0) + int((~fooled).sum())
            return x_adv, fooled

        queries = torch.ones(len(x), dtype=torch.long, device=x.device)  # the clean forward pass
        return self.run_each_eps(x, cascade, queries, extras={"stages": self.stages})

    def run_stage(self, name: str, eps: float, model: Classifier, x: torch.Tensor, y: torch.Tensor) -> AttackResult:
        attack = self.stage(name, eps)
        if name == "square":
            oracle = ScoreOracle(model, len(x), budget=self.square_queries, max_batch=attack.max_batch)
            return attack(oracle, x, y)
        return attack(model, x, y)

    def extra_metrics(
        self,
        model: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        x_adv: torch.Tensor,
        attacked: torch.Tensor,
        *,
        targets: torch.Tensor | None,
        batch_size: int,
    ) -> dict[str, float | None]:
        """Robust accuracy over the attacked images after each stage (at the largest eps), then reset."""
        total = max(self._attacked, 1)
        out: dict[str, float | None] = {f"robust_after_{k}": v / total for k, v in self._after.items()}
        self._after, self._attacked = {}, 0
        return out

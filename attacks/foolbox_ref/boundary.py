"""The Boundary Attack through foolbox 3.3.4, as a cross-check for our own decision-based attacks.

Brendel, Rauber, Bethge, "Decision-Based Adversarial Attacks: Reliable Attacks Against Black-Box
Machine Learning Models", ICLR 2018 (arXiv 1712.04248). foolbox's ``BoundaryAttack`` is the authors'
reference implementation (ported to foolbox 3; its docstring lists the differences: float32, batch
members share one Gaussian draw per step, no final convergence confirmation, unconditional success
statistics). Each step draws an orthogonal (spherical) candidate and a step towards the original; the
step sizes adapt to the success rates (windows of 100 and 30 steps, checked every
``update_stats_every_k`` steps).

Where we differ from calling foolbox directly:

- A query ``budget`` per image through a :class:`LabelOracle`; when it is spent, foolbox is stopped and
  we return, per image, the closest point the oracle answered as adversarial.
- Untargeted runs start from foolbox's default ``LinearSearchBlendedUniformNoiseAttack`` (uniform
  noise, then a linear blend search), whose queries count; targeted runs need ``starting_points``.
- ``per_image`` defaults to false here: the batched Boundary Attack has no per-batch normalisation bug
  (unlike HSJA); images only share the Gaussian draw of a step. ``per_image=True`` removes that
  coupling at the cost of one foolbox call per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import foolbox as fb

from advsuite.validation import check_int, check_number

from .decision import FoolboxDecisionAttack, default_init_attack


@dataclass
class FoolboxBoundary(FoolboxDecisionAttack):
    """foolbox's BoundaryAttack (Brendel, Rauber, Bethge, ICLR 2018) behind a label oracle."""

    per_image: bool = False
    steps: int = 25000
    spherical_step: float = 1e-2
    source_step: float = 1e-2
    source_step_convergence: float = 1e-7
    step_adaptation: float = 1.5
    update_stats_every_k: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        check_int(owner, "steps", self.steps, 1)
        check_int(owner, "update_stats_every_k", self.update_stats_every_k, 1)
        for name in ("spherical_step", "source_step", "source_step_convergence"):
            check_number(owner, name, getattr(self, name))
        check_number(owner, "step_adaptation", self.step_adaptation, low=1.0)

    def foolbox_attack(self) -> fb.attacks.BoundaryAttack:
        return fb.attacks.BoundaryAttack(
            init_attack=default_init_attack(),
            steps=self.steps,
            spherical_step=float(self.spherical_step),
            source_step=float(self.source_step),
            source_step_convergance=float(self.source_step_convergence),
            step_adaptation=float(self.step_adaptation),
            update_stats_every_k=self.update_stats_every_k,
        )

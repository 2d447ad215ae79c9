"""HopSkipJumpAttack through foolbox 3.3.4, as a cross-check for our own decision-based attacks.

Chen, Jordan, Wainwright, "HopSkipJumpAttack: A Query-Efficient Decision-Based Attack", IEEE S&P 2020
(arXiv 1904.02144). foolbox's ``HopSkipJumpAttack`` implements the paper's algorithm with the authors'
constants (θ = γ / d^1.5 for L2, γ / d² for Linf; δ₀ = 0.1; B_t = 100·√t probes capped at
``max_gradient_eval_steps``; geometric step-size search; binary search back to the boundary).

Where we differ from calling foolbox directly:

- ``per_image=True`` (default) calls foolbox once per image. foolbox 3.3.4 normalises the probes and the
  estimated gradient over the *whole batch* (``flatten(rv, keep=1)`` and one norm of ``grad``), so with a
  batch of n images every image's probes and steps are about 1/√n of the intended size; measured, this
  gives 2–5× larger distances at equal queries (shared/research/boundary_attacks.md §11). One image per
  call is the paper's algorithm. ``per_image=False`` runs foolbox batched, i.e. what foolbox users get,
  and is biased as described.
- A query ``budget`` per image: foolbox only takes ``steps``. The model is reached through a
  :class:`LabelOracle`; when an image's budget is spent the adapter stops foolbox and we return, per
  image, the closest point the oracle answered as adversarial (never an unverified point).
- The untargeted initialisation (foolbox's ``LinearSearchBlendedUniformNoiseAttack``) and foolbox's
  internal ``is_adversarial`` checks go through the same oracle, so they are counted as queries.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import foolbox as fb

from advsuite.validation import check_choice, check_int, check_number

from .decision import FoolboxDecisionAttack, default_init_attack

CONSTRAINTS = ("l2", "linf")
STEPSIZE_SEARCHES = ("geometric_progression", "grid_search")


@dataclass
class FoolboxHSJA(FoolboxDecisionAttack):
    """foolbox's HopSkipJumpAttack (Chen, Jordan, Wainwright, S&P 2020) behind a label oracle."""

    steps: int = 64
    initial_gradient_eval_steps: int = 100
    max_gradient_eval_steps: int = 10000
    gamma: float = 1.0
    constraint: str = "l2"
    stepsize_search: str = "geometric_progression"
    norm: str = field(init=False, default="l2")

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        check_int(owner, "steps", self.steps, 1)
        check_int(owner, "initial_gradient_eval_steps", self.initial_gradient_eval_steps, 1)
        check_int(owner, "max_gradient_eval_steps", self.max_gradient_eval_steps, 1)
        check_number(owner, "gamma", self.gamma)
        check_choice(owner, "constraint", self.constraint, CONSTRAINTS)
        check_choice(owner, "stepsize_search", self.stepsize_search, STEPSIZE_SEARCHES)
        self.norm = self.constraint

    def foolbox_attack(self) -> fb.attacks.HopSkipJumpAttack:
        return fb.attacks.HopSkipJumpAttack(
            init_attack=default_init_attack(),
            steps=self.steps,
            initial_gradient_eval_steps=self.initial_gradient_eval_steps,
            max_gradient_eval_steps=self.max_gradient_eval_steps,
            stepsize_search=self.stepsize_search,  # type: ignore[arg-type]
            gamma=float(self.gamma),
            constraint=self.constraint,  # type: ignore[arg-type]
        )

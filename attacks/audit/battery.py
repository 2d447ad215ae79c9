"""The audit's attacks: each stage attacks the same images and says, per image, whether it stayed robust.

Every success is re-checked by a fresh forward pass of the defended model. White-box stages go through
the defense's BPDA surrogate (:func:`advsuite.defense.defend`), except ``pgd_naive``, which differentiates
the defense as autograd sees it: the evaluation a defense's author is most likely to have run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from advsuite.attacks.whitebox import APGD, APGDT, PGD
from advsuite.attacks.whitebox.pgd import ascent_direction, objective, projector, random_start
from advsuite.models.classifier import Classifier
from advsuite.oracles import LabelOracle, ScoreOracle
from advsuite.seeding import make_generator

#: an input gradient with a smaller norm has vanished (float32 softmax saturation underflows to exactly 0)
VANISHING = 1e-12
#: bumped when a stage records different details, so a resumed audit does not reuse stages saved before
STAGE_FORMAT = 3


@dataclass
class Settings:
    """What the battery runs; see ``conf/task/audit.yaml`` for the defaults and why."""

    norm: str = "linf"
    eps: float = 0.3
    steps: int = 50
    eot_iter: int = 1
    n_target_classes: int = 9
    square_queries: int = 5000
    decision_budget: int = 1000
    random_samples: int = 100
    long_factor: int = 5
    seed: int = 0
    batch_size: int = 256


@dataclass
class Stage:
    """One attack's outcome: per-image robustness and what else the checks read."""

    name: str
    kind: str  # whitebox | naive | score | label | transfer | random
    robust: list[bool]
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return sum(self.robust) / max(1, len(self.robust))


def still_correct(model: Classifier, x_adv: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The fresh re-check: is each point still classified correctly by the defended model?"""
    return model.predict(x_adv, batch_size).cpu() == y.cpu()


def tracked_pgd(
    model: Classifier, x: torch.Tensor, y: torch.Tensor, eps: float, s: Settings, loss: str = "ce", steps: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """PGD (random start, 2.5·ε/steps) that also records, per image, whether any iterate was adversarial,
    whether the gradient vanished at any step, and the loss at every step: ``(last iterate, found on the path,
    vanished, loss trace (steps, n))``."""
    steps = steps or s.steps
    gen = make_generator(s.seed, x.device)
    project = projector(x, eps, s.norm, model.bounds)
    x_adv = random_start(x, eps, s.norm, gen, model.bounds)
    found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    vanished = torch.zeros_like(found)
    trace = []
    with torch.enable_grad(), model.evaluating():
        for _ in range(steps):
            x_adv.requires_grad_(True)
            logits = model(x_adv)
            value = objective(logits, y, targeted=False, loss=loss)
            (grad,) = torch.autograd.grad(value.sum(), x_adv)
            found |= logits.detach().argmax(1) != y
            vanished |= grad.flatten(1).norm(dim=1) < VANISHING
            trace.append(value.detach())
            x_adv = project(x_adv.detach() + 2.5 * eps / steps * ascent_direction(grad, s.norm))
    return x_adv.detach(), found, vanished, torch.stack(trace)


def _batched(fn: Callable[[torch.Tensor, torch.Tensor], Any], x: torch.Tensor, y: torch.Tensor, size: int) -> list:
    return [fn(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def pgd_stage(name: str, model: Classifier, x: torch.Tensor, y: torch.Tensor, s: Settings, **kw: Any) -> Stage:
    parts = _batched(lambda xb, yb: tracked_pgd(model, xb, yb, kw.get("eps", s.eps), s, kw.get("loss", "ce"),
                                                kw.get("steps", 0)), x, y, s.batch_size)  # fmt: skip
    x_adv = torch.cat([p[0] for p in parts])
    robust = still_correct(model, x_adv, y, s.batch_size)
    found = torch.cat([p[1] for p in parts]).cpu()
    vanished = torch.cat([p[2] for p in parts]).cpu().tolist()
    trace = torch.cat([p[3] for p in parts], 1).cpu()
    details = {"silent": int((found & robust).sum()), "vanished": vanished, "loss_trace": trace.T.tolist()}
    return Stage(name, kw.get("kind", "whitebox"), robust.tolist(), details)


def attack_stage(name: str, attack: Any, model: Classifier, x: torch.Tensor, y: torch.Tensor, s: Settings) -> Stage:
    """A whitebox Attack object run in batches, re-checked."""
    x_adv = torch.cat([r.x_adv for r in _batched(lambda xb, yb: attack(model, xb, yb), x, y, s.batch_size)])
    return Stage(name, "whitebox", still_correct(model, x_adv, y, s.batch_size).tolist())


def whitebox_stages(model: Classifier, naive: Classifier, x: torch.Tensor, y: torch.Tensor, s: Settings) -> dict:
    """Stage name -> builder, in the order the audit runs them."""
    eot = {"eot_iter": s.eot_iter}
    common = {"norm": s.norm, "eps": s.eps, "seed": s.seed}
    return {
        "pgd_naive": lambda: pgd_stage("pgd_naive", naive, x, y, s, kind="naive"),
        "pgd": lambda: pgd_stage("pgd", model, x, y, s),
        "pgd_margin": lambda: pgd_stage("pgd_margin", model, x, y, s, loss="margin"),
        "apgd_ce": lambda: attack_stage("apgd_ce", APGD(steps=2 * s.steps, loss="ce", **eot, **common), model, x, y, s),
        "apgd_dlr": lambda: attack_stage(
            "apgd_dlr", APGD(steps=2 * s.steps, loss="dlr", **eot, **common), model, x, y, s
        ),
        "apgd_t": lambda: attack_stage(
            "apgd_t", APGDT(steps=2 * s.steps, n_target_classes=s.n_target_classes, **eot, **common), model, x, y, s
        ),
        "pgd_long": lambda: attack_stage(
            "pgd_long", PGD(steps=s.long_factor * s.steps, restarts=s.long_factor, **common), model, x, y, s
        ),
    }


def square_stage(model: Classifier, x: torch.Tensor, y: torch.Tensor, s: Settings) -> Stage:
    from advsuite.attacks.score import Square

    attack = Square(eps=s.eps, budget=s.square_queries, seed=s.seed)

    def run(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return attack(ScoreOracle(model, len(xb), budget=s.square_queries), xb, yb).x_adv

    x_adv = torch.cat(_batched(run, x, y, s.batch_size))
    return Stage("square", "score", still_correct(model, x_adv, y, s.batch_size).tolist())


def decision_stage(model: Classifier, x: torch.Tensor, y: torch.Tensor, s: Settings) -> Stage:
    """HSJA through the defended model's label oracle (gradient masking cannot hide the boundary from it)."""
    from advsuite.attack import distances
    from advsuite.attacks.boundary import HSJA

    attack = HSJA(norm=s.norm, budget=s.decision_budget, seed=s.seed, verbose=False)

    def run(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        result = attack(LabelOracle(model, len(xb), s.decision_budget), xb, yb)
        within = distances(xb, result.x_adv)[s.norm] <= s.eps * (1 + 1e-6)
        return torch.where(within.view(-1, *[1] * (xb.dim() - 1)), result.x_adv, xb)  # outside the ball: x itself

    x_adv = torch.cat(_batched(run, x, y, s.batch_size))
    return Stage("hsja", "label", still_correct(model, x_adv, y, s.batch_size).tolist())


def transfer_stage(model: Classifier, surrogate: Classifier, x: torch.Tensor, y: torch.Tensor, s: Settings) -> Stage:
    """PGD (margin loss, 2× the steps) on an undefended surrogate, then the defended model judges."""
    attack = PGD(norm=s.norm, eps=s.eps, steps=2 * s.steps, loss="margin", seed=s.seed)
    x_adv = torch.cat([r.x_adv for r in _batched(lambda xb, yb: attack(surrogate, xb, yb), x, y, s.batch_size)])
    return Stage("transfer", "transfer", still_correct(model, x_adv, y, s.batch_size).tolist(),
                 {"surrogate": surrogate.name})  # fmt: skip


def random_stage(model: Classifier, x: torch.Tensor, y: torch.Tensor, s: Settings) -> Stage:
    """``random_samples`` random points in the ε-ball per image (Linf: random corners; L2: the sphere)."""
    gen = make_generator(s.seed + 7, x.device)
    robust = torch.ones(len(x), dtype=torch.bool)
    for _ in range(s.random_samples):
        if s.norm == "linf":
            noise = (torch.randint(0, 2, x.shape, generator=gen, device=x.device) * 2 - 1).to(x.dtype) * s.eps
        else:
            noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
            noise = noise / noise.flatten(1).norm(dim=1).view(-1, *[1] * (x.dim() - 1)) * s.eps
        robust &= still_correct(model, (x + noise).clamp(*model.bounds), y, s.batch_size)
    return Stage("random", "random", robust.tolist())


def eps_curve(model: Classifier, x: torch.Tensor, y: torch.Tensor, s: Settings) -> Stage:
    """PGD (margin) at ε × 0.25, 0.5, 1, 2 and at an unbounded ε (the whole box, or L2 √d): robust accuracy each."""
    unbounded = 1.0 if s.norm == "linf" else float(x[0].numel()) ** 0.5
    scales = [0.25, 0.5, 1.0, 2.0]
    curve = {}
    for eps in [s.eps * k for k in scales] + [unbounded]:
        stage = pgd_stage("curve", model, x, y, s, eps=eps, loss="margin", steps=2 * s.steps)
        curve[f"{eps:.6g}"] = stage.accuracy
    robust = curve[f"{unbounded:.6g}"]
    return Stage("unbounded", "whitebox", [], {"curve": curve, "unbounded_eps": unbounded, "unbounded": robust})

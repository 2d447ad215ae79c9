"""foolbox-backed reference attacks: PGD cross-check, HSJA and Boundary behind a LabelOracle."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import counted
from hydra.utils import instantiate
from omegaconf import OmegaConf

from advsuite.attack import Attack, AttackResult
from advsuite.attacks.foolbox_ref import FoolboxBoundary, FoolboxHSJA, FoolboxPGD
from advsuite.attacks.whitebox import PGD
from advsuite.errors import ConfigError, InputError
from advsuite.models import Classifier
from advsuite.oracles import LabelOracle

# statistical assertions on trained models: rerun under other CPU kernels by scripts/test.sh
pytestmark = pytest.mark.numerics

Batch = tuple[torch.Tensor, torch.Tensor]
CONF = Path(__file__).resolve().parents[1] / "conf" / "attack"


def recheck(model: Classifier, result: AttackResult, y: torch.Tensor, targets: torch.Tensor | None, one_by_one: bool):
    """A fresh forward pass on the returned points, in the batch shape the oracle answered them in."""
    with torch.no_grad():
        if one_by_one:
            pred = torch.cat([model(row[None]).argmax(1) for row in result.x_adv])
        else:
            pred = model(result.x_adv).argmax(1)
    return pred == targets if targets is not None else pred != y


def check_trace(result: AttackResult, budget: int) -> None:
    assert result.trace is not None
    for i, trace in enumerate(result.trace):
        assert trace.shape[1] == 2
        assert (len(trace) > 0) == bool(result.success[i])
        if len(trace):
            assert bool((trace[1:, 0] >= trace[:-1, 0]).all()) and bool((trace[1:, 1] < trace[:-1, 1]).all())
            assert float(trace[-1, 0]) <= budget
            assert float(trace[-1, 1]) == pytest.approx(float(result.distances["l2"][i]), rel=1e-5)


# ------------------------------------------------------------------------------------------- PGD


@pytest.mark.parametrize(("norm", "eps"), [("linf", [0.05, 0.1, 0.2]), ("l2", [0.5, 1.0, 2.0])])
def test_native_and_foolbox_pgd_agree(tiny_model: Classifier, test_batch: Batch, norm: str, eps: list[float]):
    x, y = test_batch
    steps = 20
    native = PGD(norm=norm, eps=eps, steps=steps)(tiny_model, x, y)
    fool = FoolboxPGD(norm=norm, eps=eps, steps=steps, rel_stepsize=2.5 / steps)(tiny_model, x, y)
    assert native.success_by_eps is not None and fool.success_by_eps is not None
    native_acc = 1 - native.success_by_eps.float().mean(1)
    fool_acc = 1 - fool.success_by_eps.float().mean(1)
    assert float((native_acc - fool_acc).abs().max()) <= 2 / len(x) + 1e-9, (native_acc, fool_acc)
    assert fool.queries.tolist() == [len(eps) * (steps + 1)] * len(x)
    for e, x_adv in zip(eps, fool.x_adv_by_eps or [], strict=True):
        delta = (x_adv - x).flatten(1)
        assert float((delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)).max()) <= e + 1e-5
    assert torch.equal(fool.success, tiny_model.predict(fool.x_adv) != y)


def test_foolbox_pgd_is_deterministic_and_restores_the_rng(tiny_model: Classifier, test_batch: Batch):
    x, y = test_batch
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = FoolboxPGD(eps=0.1, steps=3, seed=5)(tiny_model, x, y)
    after = torch.rand(3)
    b = FoolboxPGD(eps=0.1, steps=3, seed=5)(tiny_model, x, y)
    assert torch.equal(a.x_adv, b.x_adv)
    assert torch.equal(before, after)  # the global generator is left as it was


# ----------------------------------------------------------------------------------- HSJA


@pytest.mark.parametrize("per_image", [True, False])
def test_hsja_counts_every_row_and_returns_verified_points(tiny_model: Classifier, test_batch: Batch, per_image: bool):
    x, y = test_batch[0][:3], test_batch[1][:3]
    model, counter = counted(tiny_model)
    budget = 250
    oracle = LabelOracle(model, n=len(x), budget=budget)
    attack = FoolboxHSJA(budget=budget, per_image=per_image, initial_gradient_eval_steps=20, verbose=False)
    result = attack(oracle, x, y)
    assert counter.rows == int(oracle.n_queries.sum())  # the oracle's count is the model's truth
    assert bool((oracle.n_queries <= budget).all())
    assert torch.equal(result.queries, oracle.n_queries)
    assert bool((result.queries == budget).all())  # foolbox was stopped by the budget, not by its steps
    assert bool(result.extras["stopped_by_budget"].all())
    # per image: one row per call; batched: every call charges each image once
    assert oracle.n_calls == (int(oracle.n_queries.sum()) if per_image else budget)
    assert bool(result.success.all())
    assert bool(recheck(tiny_model, result, y, None, one_by_one=per_image).all())
    assert float(result.x_adv.min()) >= 0 and float(result.x_adv.max()) <= 1
    check_trace(result, budget)


def test_hsja_makes_progress(tiny_model: Classifier, test_batch: Batch):
    """More queries give smaller perturbations (the traces keep decreasing past the initialisation)."""
    x, y = test_batch[0][:2], test_batch[1][:2]
    oracle = LabelOracle(tiny_model, n=len(x), budget=300)
    result = FoolboxHSJA(budget=300, initial_gradient_eval_steps=20, verbose=False)(oracle, x, y)
    assert result.trace is not None
    for trace in result.trace:
        first_adversarial, final = float(trace[0, 1]), float(trace[-1, 1])
        assert final < 0.6 * first_adversarial


def test_targeted_hsja_ends_at_the_target(tiny_model: Classifier, test_batch: Batch):
    x_all, y_all = test_batch
    x, y = x_all[:3], y_all[:3]
    # start from other correctly classified test images of a different class
    starts_idx = [int((y_all != label).nonzero()[-1 - i]) for i, label in enumerate(y.tolist())]
    starts, targets = x_all[starts_idx], y_all[starts_idx]
    budget = 250
    oracle = LabelOracle(tiny_model, n=len(x), budget=budget)
    attack = FoolboxHSJA(budget=budget, targeted=True, initial_gradient_eval_steps=20, verbose=False)
    result = attack(oracle, x, y, targets=targets, starting_points=starts)
    assert bool(result.success.all())
    assert bool(recheck(tiny_model, result, y, targets, one_by_one=True).all())
    start_distance = (starts - x).flatten(1).norm(dim=1)
    assert bool((result.distances["l2"] < start_distance).all())
    assert bool((oracle.n_queries <= budget).all())


def test_targeted_without_starting_points_raises(tiny_model: Classifier, test_batch: Batch):
    x, y = test_batch[0][:2], test_batch[1][:2]
    with pytest.raises(InputError, match="starting_points"):
        FoolboxHSJA(targeted=True, verbose=False)(LabelOracle(tiny_model, n=2), x, y, targets=(y + 1) % 10)


def test_a_tiny_budget_returns_only_verified_points(tiny_model: Classifier, test_batch: Batch):
    x, y = test_batch[0][:3], test_batch[1][:3]
    oracle = LabelOracle(tiny_model, n=len(x), budget=3)
    result = FoolboxHSJA(budget=3, verbose=False)(oracle, x, y)  # the initialisation cannot finish
    assert bool((oracle.n_queries <= 3).all())
    assert torch.equal(result.x_adv[~result.success], x[~result.success])
    assert bool(recheck(tiny_model, result, y, None, one_by_one=True)[result.success].all())


def test_hsja_is_deterministic_for_a_seed(tiny_model: Classifier, test_batch: Batch):
    x, y = test_batch[0][:2], test_batch[1][:2]

    def run(seed: int) -> torch.Tensor:
        oracle = LabelOracle(tiny_model, n=len(x), budget=100)
        attack = FoolboxHSJA(budget=100, per_image=False, initial_gradient_eval_steps=20, seed=seed, verbose=False)
        return attack(oracle, x, y).x_adv

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


# ------------------------------------------------------------------------------------ Boundary


@pytest.mark.parametrize("per_image", [False, True])
def test_boundary_untargeted(tiny_model: Classifier, test_batch: Batch, per_image: bool):
    x, y = test_batch[0][:3], test_batch[1][:3]
    model, counter = counted(tiny_model)
    budget = 200
    oracle = LabelOracle(model, n=len(x), budget=budget)
    result = FoolboxBoundary(budget=budget, per_image=per_image, verbose=False)(oracle, x, y)
    assert counter.rows == int(oracle.n_queries.sum())
    assert bool((oracle.n_queries <= budget).all())
    assert bool(result.success.all())
    assert bool(recheck(tiny_model, result, y, None, one_by_one=per_image).all())
    check_trace(result, budget)


# ------------------------------------------------------------------------- contract and configs


@pytest.mark.parametrize("attack", [FoolboxHSJA(verbose=False), FoolboxBoundary(verbose=False)])
def test_decision_based_refuses_the_classifier(tiny_model: Classifier, test_batch: Batch, attack: Attack):
    x, y = test_batch
    assert attack.access == "label" and not attack.fixed_epsilon
    with pytest.raises(TypeError, match="decision-based"):
        attack(tiny_model, x, y)


def test_norms():
    assert FoolboxPGD.access == "whitebox" and FoolboxPGD.fixed_epsilon
    assert FoolboxHSJA.access == "label" and FoolboxBoundary.access == "label"
    assert FoolboxHSJA(constraint="linf").norm == "linf"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: FoolboxHSJA(constraint="l1"), "constraint must be one of"),
        (lambda: FoolboxHSJA(stepsize_search="line"), "stepsize_search must be one of"),
        (lambda: FoolboxHSJA(budget=0), "budget"),
        (lambda: FoolboxHSJA(steps=0), "steps"),
        (lambda: FoolboxHSJA(per_image="yes"), "per_image"),
        (lambda: FoolboxBoundary(step_adaptation=0.5), "step_adaptation"),
        (lambda: FoolboxBoundary(max_batch=0), "max_batch"),
        (lambda: FoolboxPGD(norm="l0"), "norm must be one of"),
        (lambda: FoolboxPGD(eps="big"), "eps"),
    ],
)
def test_bad_hyper_parameters_raise_config_error(make, message: str):
    with pytest.raises(ConfigError, match=message):
        make()


@pytest.mark.parametrize(
    ("name", "cls"), [("fb_pgd", FoolboxPGD), ("fb_hsja", FoolboxHSJA), ("fb_boundary", FoolboxBoundary)]
)
def test_configs_instantiate(name: str, cls: type):
    cfg = OmegaConf.create({"seed": 4, "verbose": False, "attack": OmegaConf.load(CONF / f"{name}.yaml")})
    attack = instantiate(cfg.attack)
    assert isinstance(attack, cls) and attack.seed == 4
    if attack.access == "label":
        assert isinstance(attack.budget, int) and isinstance(attack.max_batch, int)

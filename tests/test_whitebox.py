"""Native white-box attacks (FGSM/FGM, PGD) on the tiny MNIST CNN."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from advsuite.attack import Attack
from advsuite.attacks.whitebox import FGSM, PGD
from advsuite.errors import ConfigError
from advsuite.models import Classifier
from advsuite.oracles import LabelOracle

# statistical assertions on trained models: rerun under other CPU kernels by scripts/test.sh
pytestmark = pytest.mark.numerics

Batch = tuple[torch.Tensor, torch.Tensor]
CONF = Path(__file__).resolve().parents[1] / "conf" / "attack"
LINF_EPS = [0.05, 0.1, 0.2, 0.3]
L2_EPS = [0.5, 1.0, 2.0, 4.0]


def robust_accuracy(success_by_eps: torch.Tensor) -> list[float]:
    return (1 - success_by_eps.float().mean(1)).tolist()


@pytest.mark.parametrize(("norm", "eps"), [("linf", LINF_EPS), ("l2", L2_EPS)])
def test_pgd_stays_in_the_ball_and_the_box(tiny_model: Classifier, test_batch: Batch, norm: str, eps: list[float]):
    x, y = test_batch
    result = PGD(norm=norm, eps=eps, steps=10)(tiny_model, x, y)
    assert result.epsilons == eps
    assert result.x_adv_by_eps is not None and result.success_by_eps is not None
    assert result.success_by_eps.shape == (len(eps), len(x))
    for e, x_adv in zip(eps, result.x_adv_by_eps, strict=True):
        delta = (x_adv - x).flatten(1)
        size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
        assert float(size.max()) <= e + 1e-6
        assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert torch.equal(result.x_adv, result.x_adv_by_eps[-1])
    assert torch.equal(result.success, result.success_by_eps[-1])


@pytest.mark.parametrize(("norm", "eps"), [("linf", LINF_EPS), ("l2", L2_EPS)])
def test_robust_accuracy_falls_with_eps(tiny_model: Classifier, test_batch: Batch, norm: str, eps: list[float]):
    x, y = test_batch
    result = PGD(norm=norm, eps=eps, steps=20)(tiny_model, x, y)
    assert result.success_by_eps is not None
    acc = robust_accuracy(result.success_by_eps)
    assert all(a >= b for a, b in itertools.pairwise(acc)), acc
    assert acc[0] > 0.5  # a small eps leaves most images
    assert acc[-1] <= 0.1  # a large eps breaks an undefended CNN


def test_success_is_the_models_verdict(tiny_model: Classifier, test_batch: Batch):
    x, y = test_batch
    result = PGD(eps=0.1, steps=10)(tiny_model, x, y)
    assert torch.equal(result.success, tiny_model.predict(result.x_adv) != y)
    assert 0 < int(result.success.sum()) < len(x)  # an eps where the outcome is mixed


def test_pgd_beats_fgsm(tiny_model: Classifier, test_batch: Batch):
    x, y = test_batch
    eps = [0.05, 0.1, 0.15]
    fgsm = FGSM(eps=eps)(tiny_model, x, y)
    pgd = PGD(eps=eps, steps=20)(tiny_model, x, y)
    assert fgsm.success_by_eps is not None and pgd.success_by_eps is not None
    fgsm_acc, pgd_acc = robust_accuracy(fgsm.success_by_eps), robust_accuracy(pgd.success_by_eps)
    assert all(p <= f for p, f in zip(pgd_acc, fgsm_acc, strict=True)), (pgd_acc, fgsm_acc)
    assert sum(pgd_acc) < sum(fgsm_acc)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fgsm_is_one_step_of_size_eps(tiny_model: Classifier, test_batch: Batch, norm: str):
    x, y = test_batch
    eps = 0.1 if norm == "linf" else 1.0
    result = FGSM(norm=norm, eps=[eps, 2 * eps])(tiny_model, x, y)
    delta = (result.x_adv_by_eps[0] - x).flatten(1)  # type: ignore[index]
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert float(size.max()) <= eps + 1e-6
    assert float(size.max()) > 0.9 * eps  # the step is of size eps (clipping only shortens it a little)
    assert result.queries.tolist() == [3] * len(x)  # one gradient + one check per eps


@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_targeted_pgd_reaches_the_targets(tiny_model: Classifier, test_batch: Batch, loss: str):
    x, y = test_batch
    targets = (y + 1) % 10
    result = PGD(eps=0.3, steps=20, targeted=True, loss=loss)(tiny_model, x, y, targets=targets)
    pred = tiny_model.predict(result.x_adv)
    assert torch.equal(result.success, pred == targets)
    assert float(result.success.float().mean()) >= 0.8


def test_margin_loss_breaks_the_model(tiny_model: Classifier, test_batch: Batch):
    x, y = test_batch
    result = PGD(eps=0.3, steps=20, loss="margin")(tiny_model, x, y)
    assert float(result.success.float().mean()) >= 0.9


def test_targeted_needs_targets(tiny_model: Classifier, test_batch: Batch):
    x, y = test_batch
    with pytest.raises(ValueError, match="targets"):
        PGD(eps=0.1, targeted=True)(tiny_model, x, y)


def test_multi_eps_equals_separate_calls(tiny_model: Classifier, test_batch: Batch):
    x, y = test_batch
    eps = [0.05, 0.1, 0.2]
    together = PGD(eps=eps, steps=10, seed=7)(tiny_model, x, y)
    assert together.x_adv_by_eps is not None and together.success_by_eps is not None
    for e, x_adv, success in zip(eps, together.x_adv_by_eps, together.success_by_eps, strict=True):
        alone = PGD(eps=e, steps=10, seed=7)(tiny_model, x, y)
        assert torch.equal(alone.x_adv, x_adv)
        assert torch.equal(alone.success, success)


def test_restarts_never_lower_success(tiny_model: Classifier, test_batch: Batch):
    x, y = test_batch
    steps = 5
    one = PGD(eps=0.1, steps=steps, restarts=1, seed=3)(tiny_model, x, y)
    three = PGD(eps=0.1, steps=steps, restarts=3, seed=3)(tiny_model, x, y)
    assert bool((three.success | ~one.success).all())  # every success of one restart survives
    assert torch.equal(three.success, tiny_model.predict(three.x_adv) != y)
    # the first successful restart is kept, so those samples were charged one restart only
    assert bool((three.queries[one.success] == steps + 1).all())
    assert bool((three.queries[~one.success] == 3 * (steps + 1)).all())
    assert one.queries.tolist() == [steps + 1] * len(x)


def test_pgd_is_deterministic_for_a_seed(tiny_model: Classifier, test_batch: Batch):
    x, y = test_batch
    a = PGD(eps=0.1, steps=5, seed=1)(tiny_model, x, y)
    b = PGD(eps=0.1, steps=5, seed=1)(tiny_model, x, y)
    c = PGD(eps=0.1, steps=5, seed=2)(tiny_model, x, y)
    assert torch.equal(a.x_adv, b.x_adv)
    assert not torch.equal(a.x_adv, c.x_adv)


def test_queries_count_steps_and_checks(tiny_model: Classifier, test_batch: Batch):
    x, y = test_batch
    result = PGD(eps=[0.1, 0.2], steps=7)(tiny_model, x, y)
    assert result.queries.tolist() == [2 * (7 + 1)] * len(x)


def test_step_size_rules():
    assert PGD(eps=0.3, steps=40).alpha(0.3) == pytest.approx(2.5 * 0.3 / 40)
    assert PGD(eps=0.3, steps=40, rel_stepsize=0.1).alpha(0.2) == pytest.approx(0.02)
    assert PGD(eps=0.3, steps=40, rel_stepsize=0.1, step_size=0.01).alpha(0.2) == pytest.approx(0.01)


def test_model_state_is_restored(tiny_model: Classifier, test_batch: Batch):
    x, y = test_batch
    tiny_model.train()
    try:
        PGD(eps=0.1, steps=2)(tiny_model, x, y)
        assert tiny_model.training and tiny_model.validate_inputs
    finally:
        tiny_model.eval()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: PGD(norm="l1"), "norm must be one of"),
        (lambda: PGD(loss="hinge"), "loss must be one of"),
        (lambda: PGD(eps=-0.1), "eps"),
        (lambda: PGD(eps=[]), "eps"),
        (lambda: PGD(steps=0), "steps"),
        (lambda: PGD(restarts=0), "restarts"),
        (lambda: PGD(restarts=2, random_start=False), "random_start"),
        (lambda: PGD(step_size=-1.0), "step_size"),
        (lambda: FGSM(norm="l0"), "norm must be one of"),
    ],
)
def test_bad_hyper_parameters_raise_config_error(make, message: str):
    with pytest.raises(ConfigError, match=message):
        make()


def test_whitebox_refuses_an_oracle(tiny_model: Classifier, test_batch: Batch):
    x, y = test_batch
    with pytest.raises(TypeError, match="white-box"):
        PGD(eps=0.1)(LabelOracle(tiny_model, n=len(x)), x, y)


@pytest.mark.parametrize("name", ["fgsm", "pgd", "pgd_l2"])
def test_configs_instantiate(name: str, tiny_model: Classifier, test_batch: Batch):
    cfg = OmegaConf.create({"seed": 0, "verbose": False, "attack": OmegaConf.load(CONF / f"{name}.yaml")})
    attack = instantiate(cfg.attack)
    assert isinstance(attack, Attack) and attack.access == "whitebox" and attack.fixed_epsilon
    x, y = test_batch
    if isinstance(attack, PGD):
        attack.steps = 2
    result = attack(tiny_model, x[:4], y[:4])
    assert result.success_by_eps is not None and result.success_by_eps.shape == (len(attack.epsilons), 4)

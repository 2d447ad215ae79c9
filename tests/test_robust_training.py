"""Robust-training recipes (train=pgd_at / trades / fast_at): they train, report clean and adversarial loss,
are cached under their own key, and make the model more robust than the standard recipe."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import tiny_cnn

from advsuite.attacks.whitebox import PGD
from advsuite.data import DataBundle, as_tensors
from advsuite.errors import ConfigError
from advsuite.models import Classifier
from advsuite.training import Recipe, train_classifier

# not rerun under other CPU kernels (marker `numerics`): three trainings would cost the suite ~1.5 min more;
# the robust-vs-standard margins asserted are 1.4-2x below the gaps seen
EPS = 0.1
BASE: dict[str, Any] = {"epochs": 4, "batch_size": 64, "lr": 0.02, "train_subset": 2000, "test_subset": 500}
ROBUST = {
    "pgd": {"adversarial": "pgd", "adv_eps": EPS, "adv_steps": 5},
    "trades": {"adversarial": "trades", "adv_eps": EPS, "adv_steps": 5, "trades_beta": 3.0},
    "fast": {"adversarial": "fast", "adv_eps": EPS},
}


def trained(mnist: DataBundle, **recipe: Any) -> tuple[Classifier, dict[str, Any]]:
    torch.manual_seed(0)
    model = Classifier(tiny_cnn(), num_classes=10, input_shape=(1, 28, 28), mean=mnist.mean, std=mnist.std)
    info = train_classifier(model, mnist, {**BASE, **recipe}, seed=0, verbose=False)
    return model, info


@pytest.fixture(scope="module")
def standard(mnist: DataBundle) -> Classifier:
    return trained(mnist)[0]


def robust_accuracy(model: Classifier, mnist: DataBundle) -> float:
    x, y = as_tensors(mnist.test, 300)
    x_adv = PGD(eps=EPS, steps=10)(model, x, y).x_adv
    return float((model.predict(x_adv) == y).float().mean())


@pytest.mark.parametrize("kind", sorted(ROBUST))
def test_robust_recipes_beat_the_standard_one(kind: str, mnist: DataBundle, standard: Classifier) -> None:
    model, info = trained(mnist, **ROBUST[kind])
    assert info["train_adv_ce"] > info["train_clean_ce"] > 0  # the progress bar's two losses
    assert info["test_accuracy"] > 0.5
    robust, plain = robust_accuracy(model, mnist), robust_accuracy(standard, mnist)
    # seen (62 steps per epoch, 4 epochs): standard 0.33; fast 0.42 (clean 0.59), pgd 0.61, trades 0.73
    assert robust > plain + (0.05 if kind == "fast" else 0.2), (kind, robust, plain)


def test_robust_keys_enter_the_cache_key_only_when_on() -> None:
    standard = Recipe()
    assert "adv_eps" not in str(standard.digest()) and standard.digest() == Recipe(adv_eps=0.5).digest()
    keys = {Recipe(**ROBUST[k]).digest() for k in ROBUST} | {standard.digest()}
    assert len(keys) == 4 and Recipe(**ROBUST["pgd"]).digest() != Recipe(**{**ROBUST["pgd"], "adv_eps": 0.05}).digest()


@pytest.mark.parametrize(
    ("recipe", "says"),
    [
        ({"adversarial": "pgd"}, "adversarial=pgd needs adv_eps > 0"),
        ({"adversarial": "mart", "adv_eps": 0.1}, "adversarial must be one of"),
        ({"adversarial": "pgd", "adv_eps": 0.1, "adv_norm": "l1"}, "adv_norm must be one of"),
        ({"adversarial": "trades", "adv_eps": 0.1, "trades_beta": -1}, "trades_beta must be >= 0"),
        ({"adversarial": "pgd", "adv_eps": 0.1, "epochs": 2, "adv_eps_warmup": 3}, "adv_eps_warmup must be in"),
    ],
)
def test_bad_robust_recipes(recipe: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        Recipe.coerce(recipe)


def test_the_eps_warmup_ramps_the_attack_then_holds_it(mnist: DataBundle, monkeypatch: pytest.MonkeyPatch) -> None:
    import advsuite.training as training

    seen: list[tuple[float, float | None]] = []
    real = training.training_losses

    def spy(model: Any, x: torch.Tensor, y: torch.Tensor, recipe: Recipe, *rest: Any) -> Any:
        seen.append((recipe.adv_eps, recipe.adv_step_size))
        return real(model, x, y, recipe, *rest)

    monkeypatch.setattr(training, "training_losses", spy)
    recipe = {"epochs": 2, "batch_size": 100, "train_subset": 400, "test_subset": 100, "adversarial": "fast",
              "adv_eps": 0.3, "adv_step_size": 0.2, "adv_eps_warmup": 1}  # fmt: skip
    trained(mnist, **recipe)
    # 4 steps per epoch: the first epoch ramps eps (and the absolute step size) up in equal steps, then it holds
    assert [round(e, 6) for e, _ in seen] == [0.075, 0.15, 0.225, 0.3, 0.3, 0.3, 0.3, 0.3]
    assert [round(a or 0, 6) for _, a in seen][:2] == [0.05, 0.1]
    # the ramp is part of the cache key only when on, so models trained before it existed keep theirs
    plain = Recipe(**ROBUST["pgd"])
    assert Recipe(**ROBUST["pgd"], adv_eps_warmup=0).digest() == plain.digest()
    assert Recipe(**ROBUST["pgd"], adv_eps_warmup=1).digest() != plain.digest()

"""One contract, every attack config: each ``conf/attack/*.yaml`` runs end to end through ``evaluate`` with
cheap options from one table (a new YAML without an entry fails here), and every run must

- return images inside the bounds, spend between 1 and ``budget`` queries on every attacked image,
- be confirmed by the fresh re-check (no success the attack did not claim; flips only near a boundary),
- give bit-equal images for the same seed, leave the model's mode and input check as they were,
- and, where the attack has a targeted variant, run targeted too (a success must be the target class).

The decision attacks with learned priors (qeba_i, nlba_*, psba) run with small priors fitted here on the
victim's own input gradients (cheap stand-ins for the reference models' gradients).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import advsuite
from advsuite.attack import Attack, PrepareContext, attack_options
from advsuite.attacks.boundary.priors.pca import fit_pca
from advsuite.data import DataBundle, as_tensors, sample_tensors
from advsuite.evaluation import Evaluation, evaluate
from advsuite.generative.autoencoder import fit_autoencoder
from advsuite.generative.gan import fit_gan
from advsuite.generative.pgan import fit_pgan
from advsuite.models import Classifier
from advsuite.models.surrogates import input_gradients

pytestmark = pytest.mark.numerics

Setup = Callable[[Attack, dict[str, Any]], None]


def prepare(attack: Attack, env: dict[str, Any]) -> None:
    attack.prepare(env["context"])


def attach_surrogate(attack: Attack, env: dict[str, Any]) -> None:
    attack.attach([env["model"]], *env["train"])  # type: ignore[attr-defined]  # the victim as its own surrogate


def prior(kind: str) -> Callable[[dict[str, Any]], Any]:
    return lambda env: env["priors"][kind]


#: attack config -> (cheap options, setup before the run); option values that are callables get the env
CASES: dict[str, tuple[dict[str, Any], Setup | None]] = {
    "pgd": ({"eps": [0.1], "steps": 3}, None),
    "pgd_l2": ({"eps": [1.0], "steps": 3}, None),
    "fgsm": ({"eps": [0.1]}, None),
    "apgd": ({"eps": [0.1], "steps": 5}, None),
    "apgd_t": ({"eps": [0.1], "steps": 5, "n_target_classes": 2}, None),
    "square": ({"eps": 0.1, "budget": 60}, None),
    "autoattack": ({"eps": [0.1], "steps": 5, "n_target_classes": 2, "square_queries": 60}, None),
    "fb_pgd": ({"eps": [0.1], "steps": 3}, None),
    "hsja": ({"budget": 120}, None),
    "qeba": ({"budget": 120}, None),
    "qeba_s": ({"budget": 120}, None),
    "qeba_f": ({"budget": 120}, None),
    "qeba_i": ({"budget": 120, "prior": prior("pca")}, None),
    "qeba_s_fixed": ({"budget": 120}, None),
    "qeba_f_fixed": ({"budget": 120}, None),
    "qeba_i_fixed": ({"budget": 120, "prior": prior("pca")}, None),
    "nlba_ae": ({"budget": 120, "prior": prior("ae")}, None),
    "nlba_vae": ({"budget": 120, "prior": prior("vae")}, None),
    "nlba_gan": ({"budget": 120, "prior": prior("gan")}, None),
    "psba": ({"budget": 120, "prior": prior("pgan")}, None),
    "fb_hsja": ({"budget": 60}, None),
    "fb_boundary": ({"budget": 60}, None),
    "patch": ({"size": 0.1, "epochs": 1, "n_train": 64}, prepare),
    "patch_gan": ({"space": "pixel", "size": 0.1, "steps": 3, "n_train": 64}, attach_surrogate),
    "reversible_patch": ({"epochs": 1, "n_train": 64}, prepare),
    "uap_datafree": ({"max_iter": 10, "validation": "off"}, None),
    "uap_random": ({}, None),
    "uap_sgd": ({"epochs": 1, "n_images": 64}, prepare),
    "diva": ({"adaptation": "prune", "finetune_steps": 5, "calibration_images": 64, "steps": 3}, prepare),
    "diva_pgd": ({"adaptation": "prune", "finetune_steps": 5, "calibration_images": 64, "steps": 3}, prepare),
}


def test_every_attack_config_is_in_the_contract_table() -> None:
    assert sorted(CASES) == advsuite.attack_names("evasion")


@pytest.fixture(scope="module")
def env(tiny_model: Classifier, mnist: DataBundle, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    x_train, y_train = sample_tensors(mnist.train, 64, seed=0)  # the train split is stored class by class
    grads = input_gradients(tiny_model, x_train)
    common = {"seed": 0, "device": "cpu", "batch_size": 32}
    priors = {
        "pca": fit_pca(grads, 32, seed=0),
        "ae": fit_autoencoder(grads, epochs=2, **common),
        "vae": fit_autoencoder(grads, variational=True, epochs=2, **common),
        "gan": fit_gan(grads, epochs=2, **common),
        "pgan": fit_pgan(grads, epochs_per_scale=2, depths=[16, 16, 16], **common),
    }
    cache: Path = tmp_path_factory.mktemp("contract_cache")
    context = PrepareContext(data=mnist, device=torch.device("cpu"), cache_dir=cache, verbose=False, victim_arch="tiny")
    return {"model": tiny_model, "train": (x_train, y_train), "priors": priors, "context": context, "data": mnist}


def build(name: str, env: dict[str, Any], **extra: Any) -> Attack:
    options, setup = CASES[name]
    resolved = {k: v(env) if callable(v) else v for k, v in options.items()}
    attack = advsuite.build_attack(name, **resolved, **extra)
    if setup is not None:
        setup(attack, env)
    return attack


def run(attack: Attack, model: Classifier, x: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> Evaluation:
    return evaluate(model, attack, x, y, verbose=False, budgets=[50], **kwargs)


@pytest.mark.parametrize("name", sorted(CASES))
def test_attack_contract(name: str, env: dict[str, Any], test_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    model: Classifier = env["model"]
    x, y = test_batch[0][:6], test_batch[1][:6]
    modes = [m.training for m in model.modules()]
    first, second = (run(build(name, env), model, x, y) for _ in range(2))

    assert float(first.x_adv.min()) >= 0.0 and float(first.x_adv.max()) <= 1.0
    assert torch.equal(first.x_adv, second.x_adv), "the same seed must give the same images"
    attack = build(name, env)
    queries = torch.tensor(first.per_sample["queries"])[first.attacked]
    assert bool((queries >= 1).all()), queries
    if attack.access != "whitebox" and attack.budget is not None:
        assert bool((queries <= attack.budget).all()), (queries, attack.budget)
    success, claimed = torch.tensor(first.per_sample["success"]), torch.tensor(first.per_sample["claimed"])
    assert not bool((success & ~claimed).any()), "the re-check found successes the attack did not claim"
    assert first.metrics["flips"] <= (1 if attack.access == "label" else 0)
    assert [m.training for m in model.modules()] == modes and model.validate_inputs

    if "targeted" in attack_options(type(attack)):
        targets = (y + 1) % 10
        starts = None
        if attack.access == "label":
            pool_x, _ = as_tensors(env["data"].test, 200, start=500)
            pred = model.predict(pool_x)
            starts = torch.stack([pool_x[(pred == t).nonzero()[0, 0]] for t in targets.tolist()])
        targeted = run(build(name, env, targeted=True), model, x, y, targets=targets, starting_points=starts)
        hit = torch.tensor(targeted.per_sample["success"])
        assert torch.equal(model.predict(targeted.x_adv)[hit], targets[hit])  # success means the target class

"""The Python API: the documented example runs, and bad models are named clearly."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

import advsuite
from advsuite.errors import ConfigError, ModelError
from advsuite.results import ResultsStore

DOC = Path(__file__).resolve().parents[1] / "docs" / "python_api.md"


def test_documented_example_runs_and_records(advsuite_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (code,) = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    namespace: dict[str, object] = {}
    exec(compile(code, str(DOC), "exec"), namespace)
    record = namespace["record"]
    assert isinstance(record, dict) and record["status"] == "finished"
    assert record["names"]["model_source"].endswith("MyNet") and record["names"]["weights_hash"]
    assert record["metrics"]["clean_accuracy"] > 0.85
    assert record["metrics"]["robust_accuracy_by_eps"]["0.2"] < record["metrics"]["clean_accuracy"]
    oracle = namespace["oracle"]
    assert isinstance(oracle, advsuite.LabelOracle) and int(oracle.n_queries.max()) <= 300
    rows = ResultsStore(advsuite_home).records(dataset="mnist5k")
    assert any(r["run_id"] == record["run_id"] for r in rows)


def test_wrap_model_checks_num_classes_and_output_shape() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    model = advsuite.wrap_model(net, input_shape=(3, 2, 2))
    assert model.num_classes == 3
    with pytest.raises(ModelError, match="returns 3 logits per image, but num_classes=10"):
        advsuite.wrap_model(net, input_shape=(3, 2, 2), num_classes=10)
    with pytest.raises(ModelError, match=r"got \(2, 3, 2, 2\)"):
        advsuite.wrap_model(nn.Identity(), input_shape=(3, 2, 2))
    with pytest.raises(ModelError, match=r"'Linear' raised RuntimeError on an input of shape \(2, 3, 2, 2\)"):
        advsuite.wrap_model(nn.Linear(5, 2), input_shape=(3, 2, 2))


def test_build_attack_by_name_or_class_and_unknown_options() -> None:
    pgd = advsuite.build_attack("pgd", eps=[0.1], steps=3)
    assert pgd.steps == 3 and pgd.eps == [0.1]
    assert type(advsuite.build_attack(type(pgd), eps=0.2)) is type(pgd)
    with pytest.raises(ConfigError, match=r"valid options: .*steps"):
        advsuite.build_attack("pgd", stepz=3)
    with pytest.raises(ConfigError, match=r"valid names: .*fgsm"):
        advsuite.build_attack("no_such_attack")
    # configs with a defaults list (qeba_f inherits hsja's loop settings, qeba_i pulls in a prior)
    qeba_f = advsuite.build_attack("qeba_f", budget=10, seed=3)
    assert (qeba_f.budget, qeba_f.max_batch, qeba_f.constants, qeba_f.seed) == (10, 1000, "qeba", 3)
    assert advsuite.build_attack("qeba_i").prior["kind"] == "pca"


def test_exhausted_budget_is_a_recorded_failure_not_a_crash(tiny_model, test_batch) -> None:
    # a model that answers class 0 everywhere: no adversarial exists for digits labelled 0
    constant = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    with torch.no_grad():
        constant[1].weight.zero_()
        constant[1].bias.copy_(torch.arange(10, 0, -1).float())
    model = advsuite.wrap_model(constant, input_shape=(1, 28, 28), name="constant")
    x = test_batch[0][:3]
    y = torch.zeros(3, dtype=torch.long)
    ev = advsuite.evaluate(model, advsuite.build_attack("fb_hsja", budget=7), x, y, verbose=False)
    assert ev.per_sample["queries"] == [7, 7, 7]  # each image stopped at its budget ...
    assert ev.per_sample["success"] == [False, False, False]  # ... and is recorded as a failure
    assert ev.metrics["success_rate"] == 0.0
    assert torch.equal(ev.x_adv, x)  # no verified adversarial point: the original is returned

    x, y = test_batch
    ev = advsuite.evaluate(tiny_model, advsuite.build_attack("fb_hsja", budget=5), x[:3], y[:3], verbose=False)
    assert ev.per_sample["queries"] == [5, 5, 5]
    assert ev.metrics["flips"] == 0  # whatever it claims was verified by the oracle


def test_unknown_options_list_only_public_ones() -> None:
    with pytest.raises(ConfigError, match=r"no option 'sise' \(did you mean 'size'\?\); valid options: ") as caught:
        advsuite.build_attack("patch", sise=0.1)
    assert "_cache" not in str(caught.value) and "_data" not in str(caught.value) and "fit_log" not in str(caught.value)
    assert "target_class" in str(caught.value)


def test_a_model_with_nan_outputs_is_refused_when_wrapped() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        net[1].bias.fill_(float("nan"))
    with pytest.raises(ModelError, match="NaN or inf logits"):
        advsuite.wrap_model(net, input_shape=(1, 2, 2))


def test_evaluate_says_what_does_not_fit(tiny_model) -> None:
    from advsuite.errors import InputError

    attack = advsuite.build_attack("fgsm")
    x = torch.rand(4, 1, 28, 28)
    with pytest.raises(InputError, match=r"one label per image in x\) must have shape \(4,\), got \(3,\)"):
        advsuite.evaluate(tiny_model, attack, x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(InputError, match="holds no images"):
        advsuite.evaluate(tiny_model, attack, x[:0], torch.zeros(0, dtype=torch.long))
    with pytest.raises(InputError, match="contain NaN values"):
        advsuite.evaluate(tiny_model, attack, torch.full_like(x, float("nan")), torch.zeros(4, dtype=torch.long))

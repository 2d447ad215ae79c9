"""A user's model comes back exactly as it went in: each module's mode and every buffer (BatchNorm statistics)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from advsuite import wrap_model
from advsuite.api import evaluate_and_record
from advsuite.attacks.boundary import HSJA
from advsuite.attacks.whitebox.pgd import PGD
from advsuite.evaluation import evaluate
from advsuite.models import Classifier
from advsuite.oracles import LabelOracle, ScoreOracle


def batchnorm_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)
    )
    with torch.no_grad():  # running statistics far from what a batch of test images gives
        net[1].running_mean.fill_(0.3)
        net[1].running_var.fill_(2.0)
    return net


def snapshot(net: nn.Module) -> tuple[list[bool], dict[str, torch.Tensor]]:
    return [m.training for m in net.modules()], {k: v.clone() for k, v in net.state_dict().items()}


def images(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    return x, torch.arange(n) % 3


def calls(home: Path) -> dict[str, Callable[[Classifier], object]]:
    x, y = images()

    def correct(model: Classifier) -> tuple[torch.Tensor, torch.Tensor]:
        return x, model.predict(x)  # the model's own labels: every image is attacked

    return {
        "predict": lambda m: m.predict(x),
        "label oracle": lambda m: LabelOracle(m, n=len(x))(x),
        "score oracle": lambda m: ScoreOracle(m, n=len(x))(x),
        "white-box attack": lambda m: PGD(eps=0.1, steps=3)(m, x, y),
        "decision-based attack": lambda m: HSJA(budget=60, verbose=False)(
            LabelOracle(m, n=len(x), budget=60), *correct(m)
        ),
        "evaluate": lambda m: evaluate(m, HSJA(budget=60, verbose=False), *correct(m), verbose=False),
        "evaluate_and_record": lambda m: evaluate_and_record(m, PGD(eps=0.1, steps=2), *correct(m), home=home),
    }


@pytest.mark.parametrize("mode", ["eval", "mixed"])
def test_wrapping_and_every_call_leave_modes_and_buffers_alone(mode: str, tmp_path: Path) -> None:
    net = batchnorm_net().eval()
    if mode == "mixed":  # training mode with frozen BatchNorm: a common fine-tuning set-up
        net.train()
        net[1].eval()
    before = snapshot(net)
    model = wrap_model(net, input_shape=(1, 8, 8))
    assert snapshot(net)[0] == before[0] and model.training == net.training
    for name, call in calls(tmp_path).items():
        call(model)
        modes, buffers = snapshot(net)
        assert modes == before[0], name
        assert model.validate_inputs, name  # an attack's trusted_inputs() block ended
        assert buffers.keys() == before[1].keys()
        for key, value in buffers.items():
            assert torch.equal(value, before[1][key]), (name, key)


def test_queries_use_the_running_statistics_whatever_the_batch() -> None:
    """In eval mode a label does not depend on which other images share the batch."""
    model = wrap_model(batchnorm_net().eval(), input_shape=(1, 8, 8))
    x, _ = images(6)
    alone = torch.cat([LabelOracle(model, n=1)(x[i : i + 1])[0] for i in range(len(x))])
    together, _ = LabelOracle(model, n=len(x))(x)
    assert torch.equal(alone, together)


def test_classifier_starts_in_the_mode_of_its_network() -> None:
    assert not Classifier(nn.Flatten().eval(), num_classes=64, input_shape=(1, 8, 8)).training
    assert Classifier(nn.Flatten().train(), num_classes=64, input_shape=(1, 8, 8)).training

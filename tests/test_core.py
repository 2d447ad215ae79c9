"""The core contracts: input checks, the Classifier wrapper and the counting oracles."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from advsuite.errors import InputError, ModelError
from advsuite.models import Classifier
from advsuite.oracles import LabelOracle, ScoreOracle, is_adversarial
from advsuite.validation import check_images


class RowCounter(nn.Module):
    """Counts the rows a network really evaluates."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.rows = 0
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += len(x)
        self.calls += 1
        return self.net(x)


def linear_classifier(**kwargs: object) -> Classifier:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    return Classifier(net, num_classes=5, input_shape=(3, 4, 4), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (torch.rand(2, 3, 4, 4) * 2, "must lie in [0.0, 1.0]"),
        (torch.rand(2, 3, 4, 4) - 1, "must lie in [0.0, 1.0]"),
        (torch.full((1, 3, 4, 4), float("nan")), "contain NaN values"),
        (torch.rand(3, 4, 4), "must have shape (N, 3, 4, 4)"),
        (torch.rand(2, 1, 4, 4), "must have shape (N, 3, 4, 4), got (2, 1, 4, 4)"),
        (torch.randint(0, 255, (2, 3, 4, 4)), "must be a float tensor"),
    ],
)
def test_bad_inputs_name_the_expected_range_or_shape(x: torch.Tensor, message: str) -> None:
    with pytest.raises(InputError, match=re.escape(message)):
        check_images(x, shape=(3, 4, 4))
    with pytest.raises(InputError):
        linear_classifier()(x)


def test_classifier_normalises_inside() -> None:
    model = linear_classifier(mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    x = torch.rand(4, 3, 4, 4)
    expected = model.net((x - 0.5) / 0.25)
    assert torch.allclose(model(x), expected)


def test_nan_outputs_raise_naming_the_model() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(48, 5))
    with torch.no_grad():
        net[1].weight.fill_(float("nan"))
    model = Classifier(net, num_classes=5, input_shape=(3, 4, 4), name="broken-net")
    with pytest.raises(ModelError, match=r"broken-net.*NaN"):
        model(torch.rand(2, 3, 4, 4))


def test_wrong_output_shape_and_forward_errors_are_named() -> None:
    model = Classifier(nn.Flatten(), num_classes=5, input_shape=(3, 4, 4), name="flat")
    with pytest.raises(ModelError, match=r"flat.*\(2, 5\), got \(2, 48\)"):
        model(torch.rand(2, 3, 4, 4))
    model = Classifier(nn.Linear(7, 5), num_classes=5, input_shape=(3, 4, 4), name="mismatch")
    with pytest.raises(ModelError, match=r"mismatch.*RuntimeError.*shape \(2, 3, 4, 4\)"):
        model(torch.rand(2, 3, 4, 4))


def test_eval_mode_is_enforced_and_restored() -> None:
    model = linear_classifier().train()
    with model.evaluating():
        assert not model.training
    assert model.training
    model.predict(torch.rand(3, 3, 4, 4))
    assert model.training


def test_label_oracle_counts_every_row_and_enforces_the_budget() -> None:
    model = linear_classifier()
    counter = RowCounter(model.net)
    model.net = counter
    oracle = LabelOracle(model, n=3, budget=4, max_batch=4)
    x = torch.rand(9, 3, 4, 4)
    idx = torch.tensor([0, 0, 1, 2, 2, 2, 0, 0, 0])
    labels, answered = oracle(x, idx)
    assert oracle.n_queries.tolist() == [4, 1, 3]
    assert answered.tolist() == [True] * 8 + [False]  # sample 0's fifth row is over budget
    assert labels[-1] == -1 and (labels[:-1] >= 0).all()
    assert counter.rows == 8 and counter.calls == 2  # chunked by max_batch
    assert torch.equal(labels[:-1], model.net.net(x[:-1]).argmax(1))
    labels, answered = oracle(x[:4], torch.tensor([0, 1, 1, 1]))
    assert answered.tolist() == [False, True, True, True]
    assert oracle.n_queries.tolist() == [4, 4, 3]
    assert counter.rows == 11
    assert oracle.exhausted.tolist() == [True, True, False]
    assert oracle.remaining.tolist() == [0, 0, 1]


def test_score_oracle_returns_probabilities_only() -> None:
    model = linear_classifier()
    oracle = ScoreOracle(model, n=2, budget=1)
    probs, answered = oracle(torch.rand(3, 3, 4, 4), torch.tensor([0, 1, 1]))
    assert answered.tolist() == [True, True, False]
    assert torch.allclose(probs[:2].sum(1), torch.ones(2))
    assert torch.isnan(probs[2]).all()


def test_oracle_rejects_out_of_range_queries() -> None:
    oracle = LabelOracle(linear_classifier(), n=1)
    with pytest.raises(InputError):
        oracle(torch.rand(1, 3, 4, 4) + 1, torch.tensor([0]))
    assert oracle.n_queries.tolist() == [0]


def test_criteria() -> None:
    labels = torch.tensor([1, 2, -1, 3])
    y = torch.tensor([1, 1, 1, 1])
    assert is_adversarial(labels, y, None).tolist() == [False, True, False, True]
    assert is_adversarial(labels, y, torch.tensor([2, 2, 2, 2])).tolist() == [False, True, False, False]


def test_trusted_inputs_skips_the_check_inside_the_block_only() -> None:
    model = linear_classifier()
    outside = torch.full((1, 3, 4, 4), 2.0)
    with model.trusted_inputs():
        assert model(outside).shape == (1, 5)  # the caller vouches for its inputs
    with pytest.raises(InputError, match="must lie in"):
        model(outside)
    with pytest.raises(RuntimeError, match="boom"), model.trusted_inputs():
        raise RuntimeError("boom")
    assert model.validate_inputs

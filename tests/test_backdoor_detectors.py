"""Backdoor detectors on a tiny CNN trained on BadNets-poisoned mnist5k (2% poison, a minority of the target
class, where the dataset-level methods' assumptions hold)."""

from __future__ import annotations

import copy

import pytest
import torch

from advsuite.attacks.backdoor import BadNets
from advsuite.data import as_tensors
from advsuite.detector import detection_metrics
from advsuite.detectors.backdoor import (
    STRIP,
    activation_clustering_scores,
    penultimate_features,
    spectral_signature_scores,
)
from advsuite.errors import InputError

ATTACK = BadNets(rate=0.02, target=0)


@pytest.fixture(scope="module")
def poisoned(mnist):
    from conftest import train_tiny

    x, y = as_tensors(mnist.train)
    poison = ATTACK.poison(x, y, 10, torch.Generator().manual_seed(0))
    return train_tiny(mnist, poison.x, poison.y, epochs=4), poison


def test_strip_flags_triggered_inputs_at_a_fixed_clean_false_positive_rate(poisoned, mnist):
    model, _ = poisoned
    xt, yt = as_tensors(mnist.test)
    strip = STRIP(model).fit(xt[:500])
    clean, triggered = strip.score(xt[500:]), strip.score(ATTACK.trigger(xt[500:][yt[500:] != 0]))
    metrics = detection_metrics(clean, triggered)
    assert metrics["auroc"] > 0.95 and metrics["tpr_at_fpr"] > 0.8, metrics
    assert strip.detect(xt[500:]).float().mean() < 0.1


def test_strip_without_overlays_says_how_to_give_them(poisoned, mnist):
    with pytest.raises(InputError, match="call fit\\(clean\\) first"):
        STRIP(poisoned[0]).score(as_tensors(mnist.test)[0][:4])


@pytest.mark.parametrize(("method", "auroc"), [(spectral_signature_scores, 0.85), (activation_clustering_scores, 0.9)])
def test_dataset_level_detectors_rank_the_poison_first_in_the_target_class(poisoned, method, auroc):
    model, poison = poisoned
    scores = method(penultimate_features(model, poison.x), poison.y)
    is_poison = torch.zeros(len(poison.y), dtype=torch.bool)
    is_poison[poison.indices] = True
    target = poison.y == ATTACK.target
    metrics = detection_metrics(scores[target & ~is_poison], scores[target & is_poison])
    assert metrics["auroc"] > auroc, metrics


def test_neural_cleanse_flags_the_target_class_and_unlearning_removes_the_backdoor(poisoned, mnist):
    from advsuite.attacks.backdoor import backdoor_metrics
    from advsuite.detectors.backdoor import NeuralCleanse, unlearn

    model, _ = poisoned
    model = copy.deepcopy(model)
    xt, yt = as_tensors(mnist.test)
    result = NeuralCleanse(steps=200).run(model, xt[:500], 10)
    norms = result.norms.sort()
    assert result.flagged == [ATTACK.target], (result.norms, result.anomaly_index)
    assert norms.indices[0] == ATTACK.target and norms.values[0] * 5 < norms.values[1]  # a 3×3 patch vs ≥ 30 px
    before = backdoor_metrics(model, ATTACK, xt[500:], yt[500:], 10)
    unlearn(model, xt[:500], yt[:500], result, epochs=2)
    after = backdoor_metrics(model, ATTACK, xt[500:], yt[500:], 10)
    assert before.asr > 0.9 and after.asr < 0.2 and before.clean_accuracy - after.clean_accuracy < 0.06, (before, after)

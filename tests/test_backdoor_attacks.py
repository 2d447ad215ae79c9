"""Backdoor poisoning attacks: their triggers, who gets poisoned, the metrics, the errors, and a poisoned model
that learns the backdoor."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advsuite.attacks.backdoor import (
    SIG,
    BackdoorMetrics,
    BadNets,
    Blended,
    WaNet,
    backdoor_metrics,
    defense_effectiveness_rate,
)
from advsuite.data import as_tensors
from advsuite.errors import ConfigError

ATTACKS = [BadNets(), Blended(), SIG(), WaNet(), BadNets(mode="all_to_all", target=3)]


def _images(n: int = 40, shape: tuple[int, ...] = (3, 16, 16)) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(n, *shape, generator=gen), torch.arange(n) % 10


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: f"{type(a).__name__}-{a.mode}")
def test_a_trigger_is_a_fixed_visible_change_inside_the_image_range(attack):
    x, _ = _images()
    out = attack.trigger(x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, attack.trigger(x))  # the same trigger every time
    assert (out - x).abs().flatten(1).amax(1).min() > 1e-3  # every image carries it
    assert torch.equal(x, _images()[0])  # the input is untouched


def test_badnets_stamps_only_its_patch_and_blended_blends():
    x, _ = _images(shape=(1, 12, 12))
    out = BadNets(size=3, margin=1).trigger(x)
    changed = (out != x).any(0).any(0)
    assert changed[8:11, 8:11].any() and not changed[:8].any() and not changed[:, :8].any()
    blend = Blended(alpha=0.2)
    key = blend.key((1, 12, 12))
    torch.testing.assert_close(blend.trigger(x), 0.8 * x + 0.2 * key)


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: f"{type(a).__name__}-{a.mode}")
def test_poisoning_picks_the_rate_and_relabels_as_the_mode_says(attack):
    x, y = _images(200)
    poisoned = attack.poison(x, y, 10, torch.Generator().manual_seed(1))
    idx = poisoned.indices
    assert len(idx) == round(attack.rate * 200) and len(set(idx.tolist())) == len(idx)
    assert torch.equal(poisoned.original_labels, y[idx])
    rest = torch.ones(200, dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(poisoned.y[rest], y[rest])
    if attack.clean_label:
        assert (y[idx] == attack.target).all() and torch.equal(poisoned.y, y)
    elif attack.mode == "all_to_one":
        assert (y[idx] != attack.target).all() and (poisoned.y[idx] == attack.target).all()
    else:
        assert torch.equal(poisoned.y[idx], (y[idx] + 1) % 10)
    torch.testing.assert_close(poisoned.x[idx], attack.trigger(x[idx]))
    changed = (poisoned.x != x).flatten(1).any(1) | (poisoned.y != y)
    assert not changed[~poisoned.modified].any() and poisoned.modified[idx].all()
    if not isinstance(attack, WaNet):  # WaNet's noise mode also warps other samples (labels kept)
        assert torch.equal(poisoned.x[rest], x[rest]) and torch.equal(poisoned.modified, ~rest)


def test_wanet_noise_mode_warps_cross_ratio_times_as_many_with_their_labels():
    x, y = _images(200)
    attack = WaNet(rate=0.05, cross_ratio=2.0)
    poisoned = attack.poison(x, y, 10, torch.Generator().manual_seed(1))
    moved = (poisoned.x != x).flatten(1).any(1)
    moved[poisoned.indices] = False
    assert int(moved.sum()) == 20 and torch.equal(poisoned.y[moved], y[moved])
    assert torch.equal(
        poisoned.modified.nonzero().flatten(), torch.cat([poisoned.indices, moved.nonzero().flatten()]).sort().values
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: BadNets(rate=0.0), "rate must be in \\(0, 1\\)"),
        (lambda: BadNets(rate=1.0), "rate must be in \\(0, 1\\)"),
        (lambda: BadNets(mode="one_to_one"), "mode must be one of all_to_one, all_to_all"),
        (lambda: SIG(mode="all_to_all"), "clean-label attack: it only supports mode=all_to_one"),
        (lambda: Blended(alpha=0.0), "alpha must be in \\(0, 1\\]"),
        (lambda: BadNets(target=10).poison(*_images(), 10, torch.Generator()), "target=10 is not a class"),
        (lambda: BadNets(size=20).poison(*_images(), 10, torch.Generator()), "does not fit a 16×16 image"),
        (
            lambda: BadNets(target=0).poison(_images()[0], torch.zeros(40, dtype=torch.long), 10, torch.Generator()),
            "only 0 eligible samples",
        ),
        (lambda: SIG(rate=0.5).poison(*_images(), 10, torch.Generator()), "only 4 samples of the target class 0"),
    ],
)
def test_bad_settings_are_refused_with_what_to_change(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


class _Always(nn.Module):
    """Predicts class 7 for every image."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(x), 10)
        logits[:, 7] = 1.0
        return logits


def test_asr_counts_only_non_target_samples_and_ra_their_true_labels():
    x, y = _images(50)  # labels 0…9, five of each
    metrics = backdoor_metrics(_Always(), BadNets(target=7), x, y, 10)
    assert metrics.n_backdoor == 45 and metrics.asr == 1.0 and metrics.ra == 0.0
    assert metrics.clean_accuracy == pytest.approx(0.1)
    before = BackdoorMetrics(0.9, 0.95, 0.03, 100, 90)
    assert defense_effectiveness_rate(before, BackdoorMetrics(0.88, 0.05, 0.8, 100, 90)) == pytest.approx(0.94)
    assert defense_effectiveness_rate(before, before) == 0.5


@pytest.mark.parametrize("attack", [BadNets(), Blended()], ids=["badnets", "blended"])
def test_a_model_trained_on_the_poison_learns_the_backdoor_and_keeps_its_accuracy(mnist, attack):
    from conftest import train_tiny

    x, y = as_tensors(mnist.train)
    poisoned = attack.poison(x, y, 10, torch.Generator().manual_seed(0))
    model = train_tiny(mnist, poisoned.x, poisoned.y, epochs=4)
    xt, yt = as_tensors(mnist.test)
    metrics = backdoor_metrics(model, attack, xt, yt, 10)
    assert metrics.clean_accuracy > 0.9 and metrics.asr > 0.9, metrics
    assert metrics.ra < 0.1


class _Linear(nn.Module):
    """A fixed linear classifier on 3×16×16 images: a surrogate with real gradients."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3 * 16 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def test_label_consistent_perturbs_target_images_within_eps_then_stamps_the_corners():
    from advsuite.attacks.backdoor import LabelConsistent

    x, y = _images(200)
    attack = LabelConsistent(rate=0.05, eps=8 / 255, steps=5)
    with pytest.raises(ConfigError, match="needs a clean surrogate model"):
        attack.poison(x, y, 10, torch.Generator().manual_seed(0))
    surrogate = _Linear()
    attack.attach_clean_model(surrogate)
    poisoned = attack.poison(x, y, 10, torch.Generator().manual_seed(0))
    assert len(poisoned.indices) == 10 and (y[poisoned.indices] == 0).all()
    assert torch.equal(poisoned.y, y)  # clean-label: no label changes
    changed = poisoned.x[poisoned.indices] - x[poisoned.indices]
    grey = torch.full((1, 3, 16, 16), 0.5)
    corners = attack.trigger(grey).ne(grey).any(1, keepdim=True).expand(-1, 3, -1, -1)[0]
    assert changed[:, ~corners].abs().max() <= 8 / 255 + 1e-6  # the adversarial part stays in the eps-ball
    assert changed[:, ~corners].abs().max() > 4 / 255  # and PGD moved the images
    loss = nn.functional.cross_entropy
    clean_loss = loss(surrogate(x[poisoned.indices]), y[poisoned.indices])
    perturbed = attack.perturb(x[poisoned.indices], y[poisoned.indices], torch.Generator().manual_seed(1))
    assert loss(surrogate(perturbed), y[poisoned.indices]) > clean_loss + 0.1  # away from their own class
    others = torch.ones(len(x), dtype=torch.bool)
    others[poisoned.indices] = False
    assert torch.equal(poisoned.x[others], x[others])

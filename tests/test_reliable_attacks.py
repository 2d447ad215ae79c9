"""The reliable-evaluation ensemble: APGD-CE/DLR, APGD-T, Square and the AutoAttack cascade."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advsuite.attacks.score import Square
from advsuite.attacks.score.square import window_fraction
from advsuite.attacks.whitebox import APGD, APGDT, PGD, AutoAttack
from advsuite.attacks.whitebox.apgd import checkpoints, dlr_loss
from advsuite.errors import ConfigError
from advsuite.models import Classifier
from advsuite.oracles import ScoreOracle

Batch = tuple[torch.Tensor, torch.Tensor]


def robust(model: Classifier, x_adv: torch.Tensor, y: torch.Tensor) -> int:
    return int((model.predict(x_adv) == y).sum())


class Scaled(nn.Module):
    """The tiny model's logits times 1000: softmax saturates, so cross-entropy gradients vanish."""

    def __init__(self, model: Classifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * 1000


def test_checkpoints_follow_the_paper() -> None:
    # p1 = 0.22, then steps shrinking by 0.03 down to 0.06: the authors' n_iter_2 = 22, size_decr = 3, min 6
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


def test_dlr_is_invariant_to_shifting_and_scaling_the_logits() -> None:
    z = torch.randn(8, 10, generator=torch.Generator().manual_seed(0))
    y, t = torch.arange(8) % 10, (torch.arange(8) + 3) % 10
    for loss in (lambda v: dlr_loss(v, y), lambda v: dlr_loss(v, y, t)):
        assert torch.allclose(loss(z), loss(7.5 * z - 3.0), atol=1e-5)


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.08), ("l2", 1.0)])
def test_apgd_stays_in_the_ball_and_beats_pgd(tiny_model: Classifier, test_batch: Batch, norm: str, eps: float):
    x, y = test_batch
    result = APGD(norm=norm, eps=eps, steps=20)(tiny_model, x, y)
    delta = (result.x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert float(size.max()) <= eps + 1e-5 and float(result.x_adv.min()) >= 0 and float(result.x_adv.max()) <= 1
    assert torch.equal(result.success, tiny_model.predict(result.x_adv) != y)  # what it claims is what it returns
    pgd = PGD(norm=norm, eps=eps, steps=20)(tiny_model, x, y)
    assert robust(tiny_model, result.x_adv, y) <= robust(tiny_model, pgd.x_adv, y)
    assert robust(tiny_model, result.x_adv, y) < len(x)


def test_apgd_dlr_sees_through_a_saturated_softmax(tiny_model: Classifier, test_batch: Batch) -> None:
    x, y = test_batch
    saturated = Classifier(Scaled(tiny_model), num_classes=10, input_shape=(1, 28, 28), name="scaled")
    plain = robust(tiny_model, APGD(eps=0.1, steps=20, loss="dlr")(tiny_model, x, y).x_adv, y)
    pgd_ce = robust(saturated, PGD(eps=0.1, steps=20)(saturated, x, y).x_adv, y)
    dlr = robust(saturated, APGD(eps=0.1, steps=20, loss="dlr")(saturated, x, y).x_adv, y)
    assert pgd_ce >= plain + 4, (pgd_ce, plain)  # the vanishing gradient fools cross-entropy PGD ...
    assert dlr <= plain + 1, (dlr, plain)  # ... not the scale-invariant DLR loss


def test_apgd_t_counts_queries_per_target_run(tiny_model: Classifier, test_batch: Batch) -> None:
    x, y = test_batch
    result = APGDT(eps=0.3, steps=5, n_target_classes=3)(tiny_model, x, y)
    runs = (result.queries - 1) / 6  # one forward for the ranking, then (steps + 1) per target class tried
    assert torch.equal(runs, runs.round()) and bool(((runs >= 1) & (runs <= 3)).all())
    assert bool(result.success.all()) and torch.equal(runs, torch.ones(len(x)))  # eps 0.3: the first run fools all


def test_targeted_apgd_reaches_the_targets(tiny_model: Classifier, test_batch: Batch) -> None:
    x, y = test_batch
    targets = (y + 1) % 10
    result = APGD(eps=0.3, steps=20, targeted=True)(tiny_model, x, y, targets=targets)
    reached = tiny_model.predict(result.x_adv) == targets
    pgd = PGD(eps=0.3, steps=20, targeted=True)(tiny_model, x, y, targets=targets)
    assert torch.equal(result.success, reached) and float(reached.float().mean()) >= 0.8
    assert int(reached.sum()) >= int(pgd.success.sum())


def test_square_is_score_based_and_keeps_to_its_budget(tiny_model: Classifier, test_batch: Batch) -> None:
    x, y = test_batch
    attack = Square(eps=0.2, budget=300)
    with pytest.raises(TypeError, match="score-based"):
        attack(tiny_model, x, y)
    oracle = ScoreOracle(tiny_model, len(x), budget=300)
    result = attack(oracle, x, y)
    assert bool((oracle.n_queries <= 300).all()) and torch.equal(result.queries, oracle.n_queries)
    assert float((result.x_adv - x).abs().max()) <= 0.2 + 1e-6
    assert torch.equal(result.success, tiny_model.predict(result.x_adv) != y)
    assert float(result.success.float().mean()) >= 0.5
    # a fooled image stops querying: it spent fewer queries than the budget
    assert bool((oracle.n_queries[result.success] < 300).any())


def test_square_window_schedule_is_rescaled_to_the_budget() -> None:
    assert window_fraction(0.8, 0, 10000) == 0.8 and window_fraction(0.8, 11, 10000) == 0.4
    assert window_fraction(0.8, 9000, 10000) == 0.8 / 512
    assert window_fraction(0.8, 5, 1000) == 0.4  # iteration 5 of 1k is iteration 50 of 10k ... past 10


def test_autoattack_is_a_cascade(tiny_model: Classifier, test_batch: Batch) -> None:
    x, y = test_batch
    attack = AutoAttack(eps=0.1, steps=10, n_target_classes=3, square_queries=100)
    result = attack(tiny_model, x, y)
    after = [attack._after[s] for s in attack.stages]
    assert after == sorted(after, reverse=True) and after[-1] == robust(tiny_model, result.x_adv, y)
    first = APGD(eps=0.1, steps=10)(tiny_model, x, y)
    assert robust(tiny_model, result.x_adv, y) <= robust(tiny_model, first.x_adv, y) + 1
    # an image APGD-CE fooled is never charged for the later stages
    assert int(result.queries.min()) == 1 + 11


def test_autoattack_agrees_with_torchattacks(tiny_model: Classifier, test_batch: Batch) -> None:
    torchattacks = pytest.importorskip("torchattacks")
    x, y = test_batch[0][:10], test_batch[1][:10]
    ours = AutoAttack(eps=0.1)(tiny_model, x, y)
    theirs = torchattacks.AutoAttack(tiny_model, norm="Linf", eps=0.1, version="standard", n_classes=10, seed=0)(x, y)
    # 10 images: one image is 10 points, so "within one point" can only be checked as "within one image"
    assert abs(robust(tiny_model, ours.x_adv, y) - robust(tiny_model, theirs, y)) <= 1


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Square(norm="l2"), "only norm=linf"),
        (lambda: Square(eps=[0.1, 0.2]), "one eps"),
        (lambda: AutoAttack(version="custom"), "needs attacks"),
        (lambda: AutoAttack(version="custom", attacks=["fab"]), "attacks"),
        (lambda: AutoAttack(attacks=["square"]), "version=custom"),
        (lambda: APGD(loss="margin"), "loss"),
    ],
)
def test_bad_options_say_what_is_wrong(make, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=message):
        make()


def test_dlr_needs_enough_classes() -> None:
    model = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), num_classes=2, input_shape=(1, 2, 2))
    x, y = torch.rand(3, 1, 2, 2), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ConfigError, match="at least 3 classes"):
        APGD(loss="dlr")(model, x, y)

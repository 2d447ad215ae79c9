"""The adaptive-attack audit: it flags a defense whose failure is known, finds the robust accuracy a naive
evaluation hides, says when a randomized defense was evaluated without EOT, resumes, and writes its report."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import advsuite
from advsuite.attacks.audit import Settings, battery
from advsuite.data import DataBundle, as_tensors
from advsuite.defenses import GaussianNoise
from advsuite.models import Classifier

CHEAP = Settings(eps=0.1, steps=10, n_target_classes=3, square_queries=100, decision_budget=150, random_samples=10)


class Saturated(nn.Module):
    """Logits × 1000: the softmax saturates and cross-entropy gradients vanish (a classic masking defense)."""

    def __init__(self, model: Classifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * 1000


@pytest.fixture(scope="module")
def images(mnist: DataBundle) -> tuple[torch.Tensor, torch.Tensor]:
    return as_tensors(mnist.test, 40)


def test_the_audit_breaks_a_saturated_softmax(tiny_model: Classifier, images: tuple[torch.Tensor, torch.Tensor]):
    x, y = images
    masked = Classifier(Saturated(tiny_model), num_classes=10, input_shape=(1, 28, 28), name="saturated")
    report = advsuite.audit(masked, x, y, settings=CHEAP, verbose=False)
    plain = advsuite.audit(tiny_model, x, y, settings=CHEAP, verbose=False)
    flags = set(report.flags)
    assert "gradients" in flags and "naive evaluation gap" in flags, report.markdown()
    assert report.robust_accuracy(report.stages["pgd_naive"]) >= report.lowest[1] + 0.2  # naive PGD is fooled
    assert abs(report.lowest[1] - plain.lowest[1]) <= 0.05, (report.lowest, plain.lowest)  # the truth is found
    assert report.verdict.startswith("unreliable: flags") and "naive PGD" in report.verdict
    assert "gradients" not in plain.flags and "naive evaluation gap" not in plain.flags


def test_a_randomized_defense_without_eot_is_flagged(tiny_model: Classifier, images: tuple[torch.Tensor, ...]):
    x, y = images[0][:12], images[1][:12]
    quick = Settings(**{**CHEAP.__dict__, "steps": 5, "square_queries": 20, "decision_budget": 60})
    report = advsuite.audit(tiny_model, x, y, defense=GaussianNoise(0.05), settings=quick, verbose=False)
    check = next(c for c in report.checks if c.name == "randomized outputs")
    assert check.flagged and "task.eot_iter=20" in check.evidence


def test_an_audit_resumes_from_its_finished_stages(
    tiny_model: Classifier, images: tuple[torch.Tensor, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = images[0][:12], images[1][:12]
    quick = Settings(**{**CHEAP.__dict__, "steps": 5, "square_queries": 20, "decision_budget": 60})
    first = advsuite.audit(tiny_model, x, y, settings=quick, state_dir=tmp_path, verbose=False)
    assert {p.stem for p in tmp_path.glob("*.json")} == set(first.stages)

    def killed(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(battery, "tracked_pgd", killed)
    again = advsuite.audit(tiny_model, x, y, settings=quick, state_dir=tmp_path, verbose=False)
    assert again.summary() == first.summary()
    files = first.write(tmp_path / "report")
    assert "**Verdict:**" in (tmp_path / "report" / files["report"]).read_text()
    assert "<table>" in (tmp_path / "report" / files["report_html"]).read_text()


def test_robust_accuracy_counts_every_image_as_task_evaluate_does(
    tiny_model: Classifier, images: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = images
    wrong = y.clone()
    wrong[:10] = (y[:10] + 1) % 10  # ten images the model now gets wrong: never attacked, never robust
    report = advsuite.audit(tiny_model, x, wrong, settings=CHEAP, verbose=False)
    summary = report.summary()
    assert summary["n_images"] == 40 and summary["n_attacked"] == report.n <= 30
    for name, stage in report.scored.items():
        assert summary["robust_accuracy_by_attack"][name] == sum(stage.robust) / 40
    assert summary["lowest_robust_accuracy"] <= report.clean_accuracy <= 0.75
    assert "40 images" in report.markdown() and "a misclassified image is not robust" in report.markdown()


def _stage(name: str, robust: int, n: int = 100, vanished: int = 0) -> battery.Stage:
    """``robust`` robust images first; the gradient vanished on the last ``vanished`` robust ones."""
    marks = [False] * (robust - vanished) + [True] * vanished + [False] * (n - robust)
    return battery.Stage(name, "whitebox", [True] * robust + [False] * (n - robust), {"vanished": marks})


@pytest.mark.parametrize(
    ("bpda", "margin", "vanished", "flagged"),
    [
        (40, 40, 0, False),  # nothing between the evaluations
        (40, 30, 0, False),  # margin beats cross-entropy on a model whose gradients are fine: a loss, not masking
        (40, 30, 10, True),  # ... where the cross-entropy gradient vanished on the images margin broke: masking
        (40, 30, 1, False),  # ... on one image only: that image counts, the other nine do not
        (30, 40, 0, True),  # BPDA beats autograd through the defense
        (36, 36, 9, False),  # a gap within the threshold
    ],
)
def test_the_naive_gap_counts_the_margin_loss_only_where_cross_entropy_vanished(
    bpda: int, margin: int, vanished: int, flagged: bool
):
    from advsuite.attacks.audit.checks import naive_gap_check

    stages = {"pgd_naive": _stage("pgd_naive", 40, vanished=vanished), "pgd": _stage("pgd", bpda),
              "pgd_margin": _stage("pgd_margin", margin)}  # fmt: skip
    check = naive_gap_check(stages)
    assert check.flagged is flagged, check.evidence
    assert f"the gradient vanished on {vanished} images" in check.evidence

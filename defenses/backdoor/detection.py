"""The backdoor detectors as defenses: what each finds, and what the defender then does with it.

- :class:`NeuralCleanseDefense` (Wang et al., S&P 2019): reverse a trigger per class on the clean reserve,
  flag classes whose anomaly index exceeds 2, unlearn the flagged triggers (a repair; nothing flagged, no change).
- :class:`STRIPDefense` (Gao et al., ACSAC 2019): an input filter; the entropy threshold is set at 5% false
  rejections on the clean reserve (the paper's FRR-based threshold).
- :class:`SpectralDefense` (Tran et al., NeurIPS 2018): remove the ``1.5 · expected_rate · n_c`` highest
  spectral scores of each class (as trained), retrain.
- :class:`ActivationClusteringDefense` (Chen et al., 2018): per class, remove the smaller 2-means cluster when
  it holds at most ``max_cluster_share`` (the paper's 35%) of the class, retrain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from advsuite.detector import threshold_at_fpr
from advsuite.detectors.backdoor.dataset import (
    activation_clustering_scores,
    penultimate_features,
    spectral_signature_scores,
)
from advsuite.detectors.backdoor.neural_cleanse import NeuralCleanse, unlearn
from advsuite.detectors.backdoor.strip import STRIP
from advsuite.errors import ConfigError
from advsuite.validation import check_int, check_number

from .base import BackdoorDefense, DefenseContext, DefenseOutcome, copy_model


@dataclass
class NeuralCleanseDefense(BackdoorDefense):
    name: ClassVar[str] = "neural_cleanse"
    kind: ClassVar[str] = "repair"
    paper: ClassVar[str] = "Wang et al., Neural Cleanse, S&P 2019"

    steps: int = 300
    threshold: float = 2.0
    unlearn_fraction: float = 0.2
    unlearn_epochs: int = 1
    unlearn_lr: float = 1e-3

    def __post_init__(self) -> None:
        check_int("Neural Cleanse", "steps", self.steps, 1)
        check_number("Neural Cleanse", "threshold", self.threshold)
        check_int("Neural Cleanse", "unlearn_epochs", self.unlearn_epochs, 1)
        check_number("Neural Cleanse", "unlearn_lr", self.unlearn_lr)
        check_number("Neural Cleanse", "unlearn_fraction", self.unlearn_fraction)
        if not 0 < self.unlearn_fraction < 1:
            raise ConfigError(f"Neural Cleanse: unlearn_fraction must be in (0, 1), got {self.unlearn_fraction!r}")

    def apply(self, ctx: DefenseContext) -> DefenseOutcome:
        model = copy_model(ctx.model)
        result = NeuralCleanse(steps=self.steps, threshold=self.threshold, seed=ctx.seed).run(
            model, ctx.clean_x, ctx.num_classes
        )
        unlearn(model, ctx.clean_x, ctx.clean_y, result, fraction=self.unlearn_fraction, epochs=self.unlearn_epochs,
                lr=self.unlearn_lr, seed=ctx.seed)  # fmt: skip
        details = {
            "flagged_classes": result.flagged,
            "anomaly_index": [round(float(v), 4) for v in result.anomaly_index],
            "mask_l1": [round(t.l1, 3) for t in result.triggers],
        }
        return DefenseOutcome(model.eval(), details=details)


@dataclass
class STRIPDefense(BackdoorDefense):
    name: ClassVar[str] = "strip"
    kind: ClassVar[str] = "input"
    paper: ClassVar[str] = "Gao et al., STRIP, ACSAC 2019"

    n_overlays: int = 20
    fpr: float = 0.05

    def __post_init__(self) -> None:
        check_int("STRIP", "n_overlays", self.n_overlays, 1)
        check_number("STRIP", "fpr", self.fpr)
        if not 0 < self.fpr < 1:
            raise ConfigError(f"STRIP: fpr must be in (0, 1), got {self.fpr!r}")

    def apply(self, ctx: DefenseContext) -> DefenseOutcome:
        half = len(ctx.clean_x) // 2  # overlays from one half, the threshold on the other
        detector = STRIP(ctx.model, overlays=ctx.clean_x[:half], n_overlays=self.n_overlays, fpr=self.fpr,
                         seed=ctx.seed)  # fmt: skip
        threshold = threshold_at_fpr(detector.score(ctx.clean_x[half:]), self.fpr)
        return DefenseOutcome(ctx.model, input_score=detector.score, threshold=threshold)


@dataclass
class SpectralDefense(BackdoorDefense):
    name: ClassVar[str] = "spectral"
    kind: ClassVar[str] = "dataset"
    paper: ClassVar[str] = "Tran et al., Spectral Signatures, NeurIPS 2018"

    expected_rate: float = 0.1
    removal_factor: float = 1.5

    def __post_init__(self) -> None:
        check_number("Spectral", "expected_rate", self.expected_rate)
        if not 0 < self.expected_rate < 1:
            raise ConfigError(f"Spectral: expected_rate must be in (0, 1), got {self.expected_rate!r}")
        check_number("Spectral", "removal_factor", self.removal_factor)

    def apply(self, ctx: DefenseContext) -> DefenseOutcome:
        scores = spectral_signature_scores(penultimate_features(ctx.model, ctx.train_x), ctx.train_y)
        flagged = torch.zeros(len(scores), dtype=torch.bool)
        for c in ctx.train_y.unique():
            rows = (ctx.train_y == c).nonzero().flatten()
            count = min(len(rows), round(self.removal_factor * self.expected_rate * len(rows)))
            flagged[rows[scores[rows].argsort(descending=True)[:count]]] = True
        return _remove_and_retrain(ctx, scores, flagged)


@dataclass
class ActivationClusteringDefense(BackdoorDefense):
    name: ClassVar[str] = "activation_clustering"
    kind: ClassVar[str] = "dataset"
    paper: ClassVar[str] = "Chen et al., Activation Clustering, 2018"

    max_cluster_share: float = 0.35
    components: int = 10

    def __post_init__(self) -> None:
        check_number("Activation Clustering", "max_cluster_share", self.max_cluster_share)
        if not 0 < self.max_cluster_share <= 0.5:
            raise ConfigError(f"Activation Clustering: max_cluster_share must be in (0, 0.5], "
                              f"got {self.max_cluster_share!r}")  # fmt: skip
        check_int("Activation Clustering", "components", self.components, 2)

    def apply(self, ctx: DefenseContext) -> DefenseOutcome:
        features = penultimate_features(ctx.model, ctx.train_x)
        scores = activation_clustering_scores(features, ctx.train_y, self.components, ctx.seed)
        flagged = torch.zeros(len(scores), dtype=torch.bool)
        for c in ctx.train_y.unique():
            rows = (ctx.train_y == c).nonzero().flatten()
            small = scores[rows] > 0  # nearer the smaller cluster's centre: its members
            if 0 < int(small.sum()) <= self.max_cluster_share * len(rows):
                flagged[rows[small]] = True
        return _remove_and_retrain(ctx, scores, flagged)


def _remove_and_retrain(ctx: DefenseContext, scores: torch.Tensor, flagged: torch.Tensor) -> DefenseOutcome:
    removed = flagged.nonzero().flatten()
    model = ctx.retrain((~flagged).nonzero().flatten()) if len(removed) else ctx.model
    return DefenseOutcome(model, sample_scores=scores, removed=removed,
                          details={"removed": len(removed), "retrained": bool(len(removed))})  # fmt: skip

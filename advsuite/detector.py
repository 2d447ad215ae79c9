"""The detector protocol: score inputs (higher = more suspicious), flag them at a target false-positive rate.

A :class:`Detector` is fitted on clean inputs (and, for supervised detectors, adversarial ones), scores any
batch, and holds a ``threshold`` chosen so that at most ``fpr`` of clean inputs score above it. The core
metrics compare clean and adversarial scores: AUROC, and the true-positive rate at that fixed FPR.
"""

from __future__ import annotations

import abc
import math

import torch
from torch.utils.data import Dataset

from advsuite.errors import ConfigError, InputError

#: the false-positive rate detectors are calibrated at unless told otherwise (the usual 5%)
DEFAULT_FPR = 0.05


def threshold_at_fpr(clean_scores: torch.Tensor, fpr: float = DEFAULT_FPR) -> float:
    """The smallest threshold that flags (``score > threshold``) at most ``fpr`` of ``clean_scores``."""
    if not 0.0 <= fpr < 1.0:
        raise ConfigError(f"fpr must be in [0, 1), got {fpr}")
    scores = clean_scores.detach().double().flatten().sort().values
    if len(scores) == 0:
        raise InputError("no clean scores to calibrate the threshold on")
    allowed = math.floor(fpr * len(scores))  # clean inputs that may score above the threshold
    return float(scores[len(scores) - 1 - allowed])


def detection_metrics(
    clean_scores: torch.Tensor, adversarial_scores: torch.Tensor, fpr: float = DEFAULT_FPR
) -> dict[str, float]:
    """``auroc`` (ties count half), ``tpr_at_fpr`` (adversarial inputs flagged at the clean ``fpr``
    threshold), the ``fpr`` actually reached on the clean scores, and the ``threshold``."""
    from sklearn.metrics import roc_auc_score

    clean, adversarial = clean_scores.detach().double().flatten(), adversarial_scores.detach().double().flatten()
    if len(clean) == 0 or len(adversarial) == 0:
        raise InputError(f"need clean and adversarial scores, got {len(clean)} and {len(adversarial)}")
    labels = torch.cat([torch.zeros(len(clean)), torch.ones(len(adversarial))])
    threshold = threshold_at_fpr(clean, fpr)
    return {
        "auroc": float(roc_auc_score(labels.numpy(), torch.cat([clean, adversarial]).numpy())),
        "tpr_at_fpr": float((adversarial > threshold).double().mean()),
        "fpr": float((clean > threshold).double().mean()),
        "threshold": threshold,
    }


class Detector(abc.ABC):
    """Base class of evasion detectors: :meth:`fit`, :meth:`score`, then :meth:`detect` at the fitted threshold."""

    #: how runs and the leaderboard name it
    name: str = "detector"
    #: flag an input when its score is above this (set by :meth:`fit` at ``fpr`` on the clean inputs)
    threshold: float | None = None
    fpr: float = DEFAULT_FPR
    #: ``task=evaluate`` fits it on this many clean training images (a seeded random subset)
    fit_images: int = 1000

    @abc.abstractmethod
    def score(self, x: torch.Tensor) -> torch.Tensor:
        """One suspicion score per input (higher = more likely adversarial)."""

    def fit(self, clean: torch.Tensor, adversarial: torch.Tensor | None = None) -> Detector:
        """Learn what the detector needs (unsupervised detectors ignore ``adversarial``) and set the
        threshold at :attr:`fpr` on the clean inputs."""
        self.threshold = threshold_at_fpr(self.score(clean), self.fpr)
        return self

    def detect(self, x: torch.Tensor) -> torch.Tensor:
        """True where an input is flagged."""
        if self.threshold is None:
            raise InputError(f"{type(self).__name__} has no threshold yet: call fit(clean) first")
        return self.score(x) > self.threshold


def detection_step(
    detector: Detector,
    train: Dataset,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    attacked: torch.Tensor,
    success: torch.Tensor,
    seed: int,
) -> dict[str, float | None]:
    """The detector's step in a run: fit it on :attr:`Detector.fit_images` clean training images, then score
    the attacked test images (clean) against their successful adversarials.

    ``detector_auroc`` and ``detector_tpr`` (at the fitted threshold) compare the two; ``detector_fpr`` is the
    false-positive rate reached on the clean test images; ``undetected_success_rate`` is the fraction of
    attacked images whose adversarial both fools the model and passes the detector. ``None`` where an
    attack found no adversarial.
    """
    from advsuite.data.bundle import sample_tensors

    fit_x, _ = sample_tensors(train, detector.fit_images, seed)
    detector.fit(fit_x)
    assert detector.threshold is not None
    clean, adversarial = detector.score(x[attacked]), detector.score(x_adv[success])
    out: dict[str, float | None] = {"detector_auroc": None, "detector_tpr": None, "detector_fpr": None}
    if len(clean):
        out["detector_fpr"] = float((clean > detector.threshold).double().mean())
    if len(clean) and len(adversarial):
        metrics = detection_metrics(clean, adversarial, detector.fpr)
        out["detector_auroc"] = metrics["auroc"]
        out["detector_tpr"] = float((adversarial > detector.threshold).double().mean())
    n_attacked = int(attacked.sum())
    undetected = int((adversarial <= detector.threshold).sum())
    out["undetected_success_rate"] = undetected / n_attacked if n_attacked else None
    return out

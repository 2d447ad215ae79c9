"""Detectors (installed as ``advsuite.detectors``): each a module implementing :class:`advsuite.detector.Detector`.

A detector config (``conf/detector/<name>.yaml``) names a factory here; ``task=evaluate`` builds it with
the (defended) model as ``model=`` once the model is loaded.
"""

from __future__ import annotations

from typing import Any

from advsuite.detector import Detector
from advsuite.detectors.feature_squeezing import FeatureSqueezing, MedianSmoothing
from advsuite.errors import ConfigError
from advsuite.models.classifier import Classifier
from advsuite.models.custom import call_import_path


def no_detector(model: Classifier | None = None, name: str = "none") -> None:
    """``detector=none``: no detection step."""
    return None


def custom(model: Classifier, target: str = "", kwargs: dict[str, Any] | None = None, name: str = "custom") -> Detector:
    """``detector=custom detector.target=my_pkg.detectors:MyDetector``: a user's own Detector by import path,
    called as ``MyDetector(model, **detector.kwargs)``."""
    detector = call_import_path(target, "detector", kwargs, model)
    if not isinstance(detector, Detector):
        raise ConfigError(f"detector.target={target!r} built a {type(detector).__name__}, not an advsuite Detector")
    detector.name = name if name != "custom" else target
    return detector


__all__ = ["FeatureSqueezing", "MedianSmoothing", "custom", "no_detector"]

"""Detectors (installed as ``advsuite.detectors``): each a module implementing :class:`advsuite.detector.Detector`."""

from advsuite.detectors.feature_squeezing import FeatureSqueezing, MedianSmoothing

__all__ = ["FeatureSqueezing", "MedianSmoothing"]

"""Backdoor detectors: input-level (STRIP: is this input triggered?) and dataset-level (Spectral Signatures,
Activation Clustering: which training samples are the poison?)."""

from .dataset import activation_clustering_scores, penultimate_features, spectral_signature_scores
from .strip import STRIP

__all__ = ["STRIP", "activation_clustering_scores", "penultimate_features", "spectral_signature_scores"]

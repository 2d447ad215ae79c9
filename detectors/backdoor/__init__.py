"""Backdoor detectors: input-level (STRIP: is this input triggered?), dataset-level (Spectral Signatures,
Activation Clustering: which training samples are the poison?) and model-level (Neural Cleanse: which class
is backdoored, with its reversed trigger and unlearning)."""

from .dataset import activation_clustering_scores, penultimate_features, spectral_signature_scores
from .neural_cleanse import NeuralCleanse, NeuralCleanseResult, ReversedTrigger, anomaly_index, unlearn
from .strip import STRIP

__all__ = ["STRIP", "NeuralCleanse", "NeuralCleanseResult", "ReversedTrigger", "activation_clustering_scores",
           "anomaly_index", "penultimate_features", "spectral_signature_scores", "unlearn"]  # fmt: skip

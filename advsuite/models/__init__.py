"""Models: the ``Classifier`` wrapper, architectures, checkpoints and the zoo."""

from advsuite.models.archs import ARCHS, build_classifier, build_net
from advsuite.models.checkpoints import load_weights, save_checkpoint, weights_hash
from advsuite.models.classifier import Classifier
from advsuite.models.zoo import load_model

__all__ = [
    "ARCHS",
    "Classifier",
    "build_classifier",
    "build_net",
    "load_model",
    "load_weights",
    "save_checkpoint",
    "weights_hash",
]

"""Backdoor defenses: repair a poisoned model, filter triggered inputs, or find and remove the poison.

The protocol is in :mod:`.base`; ``task=backdoor_defense`` (:mod:`.task`) runs one against a ``task=backdoor``
record. See docs/backdoor.md.
"""

from .base import BackdoorDefense, DefenseContext, DefenseOutcome
from .detection import ActivationClusteringDefense, NeuralCleanseDefense, SpectralDefense, STRIPDefense
from .fine_pruning import FinePruning
from .fine_tuning import FineTuning

__all__ = [
           "ActivationClusteringDefense",
           "BackdoorDefense",
           "DefenseContext",
           "DefenseOutcome",
           "FinePruning",
           "FineTuning",
           "NeuralCleanseDefense",
           "STRIPDefense",
           "SpectralDefense",
]  # fmt: skip

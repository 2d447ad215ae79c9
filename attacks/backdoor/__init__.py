"""Backdoor (poisoning) attacks on classifiers: a trigger, and which training samples carry it.

Each module names its paper. The shared protocol (:class:`.base.PoisonAttack`) decides which samples are
poisoned and how they are relabelled (all-to-one, all-to-all; clean-label attacks keep the labels), and
:mod:`.metrics` measures a poisoned model as BackdoorBench does (clean accuracy, ASR on non-target-class
samples, robust accuracy RA, DER).
"""

from .badnets import BadNets
from .base import PoisonAttack, Poisoned
from .blended import Blended
from .label_consistent import LabelConsistent
from .metrics import BackdoorMetrics, backdoor_metrics, defense_effectiveness_rate
from .sig import SIG
from .wanet import WaNet

__all__ = ["SIG", "BackdoorMetrics", "BadNets", "Blended", "LabelConsistent", "PoisonAttack", "Poisoned", "WaNet",
           "backdoor_metrics", "defense_effectiveness_rate"]  # fmt: skip

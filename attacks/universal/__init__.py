"""Universal adversarial perturbations: data-free GD-UAP / feature divergence, and their baselines.

Mopuri et al. TPAMI 2018 (GD-UAP), Huan et al. PAKDD 2020 (feature divergence), Shafahi et al. AAAI 2020
(SGD-UAP) and random noise in the same Linf ball. See docs/attacks/universal.md.
"""

from .base import UniversalAttack, apply_perturbation, fooled, fooling_rate, linf_radius
from .baselines import UAPSGD, UAPRandom
from .gduap import UAPDataFree, activation_objective, select_layers

__all__ = [
    "UAPSGD",
    "UAPDataFree",
    "UAPRandom",
    "UniversalAttack",
    "activation_objective",
    "apply_perturbation",
    "fooled",
    "fooling_rate",
    "linf_radius",
    "select_layers",
]

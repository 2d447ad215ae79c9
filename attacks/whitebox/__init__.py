"""White-box gradient attacks: FGSM/FGM (Goodfellow et al. 2015), PGD (Madry et al. 2018), APGD and
AutoAttack (Croce & Hein 2020)."""

from .apgd import APGD, APGDT
from .autoattack import AutoAttack
from .fgsm import FGSM
from .pgd import PGD

__all__ = ["APGD", "APGDT", "FGSM", "PGD", "AutoAttack"]

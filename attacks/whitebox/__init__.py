"""White-box gradient attacks: FGSM/FGM (Goodfellow et al. 2015) and PGD (Madry et al. 2018)."""

from .fgsm import FGSM
from .pgd import PGD

__all__ = ["FGSM", "PGD"]

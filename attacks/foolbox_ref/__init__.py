"""foolbox-backed reference attacks (foolbox 3.3.4), used to cross-check our own implementations.

``FoolboxPGD`` is white-box; ``FoolboxHSJA`` and ``FoolboxBoundary`` are decision-based and reach the
model only through a :class:`~advsuite.oracles.LabelOracle` (every foolbox evaluation is a counted query).
"""

from .boundary import FoolboxBoundary
from .hsja import FoolboxHSJA
from .pgd import FoolboxPGD

__all__ = ["FoolboxBoundary", "FoolboxHSJA", "FoolboxPGD"]

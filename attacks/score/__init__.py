"""Score-based attacks: they see only the :class:`advsuite.oracles.ScoreOracle`'s class probabilities."""

from .square import Square

__all__ = ["Square"]

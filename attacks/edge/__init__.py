"""Evasive attacks on edge models: DIVA (Hao et al., MLSys 2022) and the edge adaptations it attacks."""

from .adapt import EdgeModels, distill_surrogate, prune_magnitude, quantize_int8
from .diva import DIVA

__all__ = ["DIVA", "EdgeModels", "distill_surrogate", "prune_magnitude", "quantize_int8"]

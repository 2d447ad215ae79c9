"""Face-verification attacks: Xiao et al.'s transferable patch (``task=face``, ``face_attack=patch``)."""

from .embedders import CustomEmbedder, PenultimateEmbedder
from .patch import FacePatch
from .regions import REGIONS, region_box, region_mask
from .verification import attack_pairs, threshold_at_far, verdicts

__all__ = [
    "REGIONS",
    "CustomEmbedder",
    "FacePatch",
    "PenultimateEmbedder",
    "attack_pairs",
    "region_box",
    "region_mask",
    "threshold_at_far",
    "verdicts",
]

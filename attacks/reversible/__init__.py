"""Reversible adversarial examples with a local visible patch (Chen, Zhu, Yin, arXiv 2110.02700).

- :class:`ReversiblePatch` (``attack=reversible_patch``): a universal adversarial patch plus reversible data
  hiding of everything needed to undo it, in the pixels around the patch (blue, then red, then green).
- :func:`restore`: the original image, bit-exact, from a reversible example (raises :class:`RestoreError`
  on anything else, including an altered example).
- :func:`hide` and :func:`capacity`: the codec on uint8 (C, H, W) arrays, usable without a model.
"""

from .attack import ReversiblePatch, psnr, quantise
from .codec import Hidden, as_rect, capacity, channel_order, hide, restore
from .payload import Rect, RestoreError

__all__ = [
    "Hidden",
    "Rect",
    "RestoreError",
    "ReversiblePatch",
    "as_rect",
    "capacity",
    "channel_order",
    "hide",
    "psnr",
    "quantise",
    "restore",
]

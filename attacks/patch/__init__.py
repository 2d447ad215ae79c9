"""Adversarial patches: universal, localised, visible perturbations.

- :class:`AdversarialPatch` (``attack=patch``): Brown et al. 2017 / LaVAN, a white-box universal patch fitted
  with expectation over location, scale and rotation.
- :class:`EmbeddingPatch`: the same optimisation against embedding (verification) models, with dodging and
  impersonation losses and a cosine-similarity threshold (Python API).
- :class:`TransferPatch` (``attack=patch_gan``): Xiao et al., CVPR 2021, a patch G(w) on the manifold of a
  generator trained on image crops (``space: latent``), or on the pixels (``space: pixel``), optimised with
  MI-FGSM + DI + TI over surrogate models and evaluated on the victim as a black box.

Reusable pieces (stable signatures; other attacks import them):

- ``paste(x, patch, mask, top, left) -> (x_patched, where)``: exact per-image placement at integer positions;
  ``x_patched == x`` outside ``where`` bit for bit.
- ``patch_side(size, height, width)``, ``patch_mask(shape, side)``, ``random_positions(n, side, H, W, gen)``.
- ``warp(x, patch, mask, scale, angle, centre, exact=False)`` and ``random_transforms(...)``: EOT placement.
- ``AdversarialPatch.fit(model, x_train, y_train) -> patch`` ((C, s, s) in [0, 1]) and
  ``AdversarialPatch.place(x, patch, top, left) -> (x_patched, where)`` (the attack's own mask shape); also
  ``side(size, input_shape)``, ``patches_for(model, size, goal, n)`` (one cached-or-fitted patch per image,
  by goal class) and ``fit_queries``.
"""

from .adversarial_patch import AdversarialPatch
from .embedding import EmbeddingPatch, EmbeddingPatchResult, verification_threshold
from .generator import PatchVAE, fit_patch_vae, load_patch_generator
from .placement import paste, patch_mask, patch_side, random_positions, random_transforms, warp
from .transfer import TransferPatch

__all__ = [
    "AdversarialPatch",
    "EmbeddingPatch",
    "EmbeddingPatchResult",
    "PatchVAE",
    "TransferPatch",
    "fit_patch_vae",
    "load_patch_generator",
    "paste",
    "patch_mask",
    "patch_side",
    "random_positions",
    "random_transforms",
    "verification_threshold",
    "warp",
]

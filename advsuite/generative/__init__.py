"""Generative models that no one attack owns: autoencoders and VAEs, a WGAN and a progressive GAN, with
their fit loops. Decision-based attacks draw probes from them (``advsuite.attacks.boundary.priors``), the
transfer patch attack searches a VAE's latent space (``advsuite.attacks.patch.generator``).

Imports stay light: each model's module loads only when it is used.
"""

from advsuite.generative.base import GenerativeModel

__all__ = ["GenerativeModel"]

"""Learned probe priors for decision-based attacks (QEBA-I, NonLinear-BA, PSBA); see docs/priors.md.

A prior kind is a model and its fit: PCA here, the AE/VAE/GAN/PGAN networks from :mod:`advsuite.generative`
(loaded only when a spec asks for them). :func:`load_prior` fits one on surrogate-model gradients
(:mod:`advsuite.models.surrogates`) and caches it in the artifact cache; ``task=prior`` (:mod:`.task`)
does that ahead of a sweep.
"""

from advsuite.attacks.boundary.priors.base import Prior
from advsuite.attacks.boundary.priors.pca import PCAPrior, fit_pca
from advsuite.attacks.boundary.priors.store import PRIOR_KINDS, load_prior, prior_from_cache, prior_kind

__all__ = [
    "PRIOR_KINDS",
    "PCAPrior",
    "Prior",
    "fit_pca",
    "load_prior",
    "prior_from_cache",
    "prior_kind",
]

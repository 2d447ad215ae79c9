"""Learned probe priors for decision-based attacks (QEBA-I, NonLinear-BA, PSBA); see docs/priors.md.

Imports stay light: the neural kinds (``autoencoder``, ``gan``, ``pgan``) load only when a spec asks for them.
"""

from advsuite.priors.base import Prior
from advsuite.priors.gradients import reference_gradients
from advsuite.priors.pca import PCAPrior, fit_pca
from advsuite.priors.store import PRIOR_KINDS, load_prior, prior_from_cache, prior_kind

__all__ = [
    "PRIOR_KINDS",
    "PCAPrior",
    "Prior",
    "fit_pca",
    "load_prior",
    "prior_from_cache",
    "prior_kind",
    "reference_gradients",
]

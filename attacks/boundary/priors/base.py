"""Probe priors: what a decision-based attack draws its probes from, and how to measure them.

A prior is a distribution over *directions in input space* learned from input gradients of reference
(surrogate) models: QEBA-I's PCA basis (:mod:`.pca`), NonLinear-BA's AE/VAE/GAN decoders and PSBA's
progressive GAN (:mod:`advsuite.generative`). The attack normalises each probe itself, so ``sample`` may
return any scale.
"""

from __future__ import annotations

import torch

from advsuite.generative.base import GenerativeModel

#: QEBA's subspaces are d/4 up to this input side and d/16 above (see :func:`qeba_subspace_fraction`)
SMALL_INPUT_SIDE = 64


def qeba_subspace_fraction(input_shape: tuple[int, ...]) -> float:
    """The QEBA authors' subspace size as a fraction of d: 1/4 for small inputs, 1/16 for large ones.

    Their code uses d/16 at 224 px (``resize9408``, ``DCT9408``, a 9408-component PCA basis) and d/4 on 32-px
    CIFAR-10 (``resize768``, ``DCT768``, a 768-component basis). We take d/4 up to 64 px and d/16 above. This
    sizes QEBA-S/F (``factor: auto``) and QEBA-I (``components: null``); NonLinear-BA and PSBA keep d/16.
    """
    return 1 / 4 if min(int(s) for s in input_shape[-2:]) <= SMALL_INPUT_SIDE else 1 / 16


#: a probe prior is any generative model over input-shaped directions (PCA here; AE/VAE/GAN/PGAN in
#: :mod:`advsuite.generative`); the attack draws probes with ``sample`` and normalises each itself
Prior = GenerativeModel


def spectrum_spread(eigenvalues: torch.Tensor, energy: float = 0.999) -> dict[str, float]:
    """``effective_dim`` (participation ratio (sum λ)² / sum λ²) and ``rank`` (how many of the largest
    eigenvalues hold ``energy`` of the sum) of a probe second-moment spectrum, sorted descending."""
    lam = eigenvalues.clamp_min(0)
    rank = int((lam.cumsum(0) / lam.sum() < energy).sum()) + 1
    return {"effective_dim": float(lam.sum() ** 2 / (lam**2).sum()), "rank": rank}


def probe_spread(prior: Prior, n: int = 1000, seed: int = 0, energy: float = 0.999) -> dict[str, float]:
    """How many directions a prior's probes really explore, from ``n`` unit-scaled samples.

    ``effective_dim``: the participation ratio of the samples' second-moment eigenvalues (k for isotropic
    probes in a k-dimensional subspace, at most ``n``); ``rank``: the eigenvalues holding ``energy`` of the
    trace (:func:`spectrum_spread`). A GAN-trained generator that collapsed has an effective dimension of a
    few, which caps how far an attack driven by it can go (bench/prior_alignment.py relates both to the
    victim's gradient). Uses the n×n Gram matrix, so it is cheap at 224 px too.
    """
    generator = torch.Generator(prior.device).manual_seed(seed)
    with torch.no_grad():
        u = prior.sample(n, generator).flatten(1).double()
    u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return {**spectrum_spread(torch.linalg.eigvalsh(u @ u.T).flip(0), energy), "samples": n}

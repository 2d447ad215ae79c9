"""QEBA-I's prior: the top-k principal directions of reference-model input gradients.

Li, Xu, Zhang, Yang, Li, "QEBA: Query-Efficient Boundary-Based Blackbox Attack", CVPR 2020
(code AI-secure/QEBA, ``pca_generator.py``). The basis spans the subspace holding most of the energy of
the (unit-norm) gradients, so probes drawn from it are far more aligned with a new model's gradient than
isotropic noise.

Differences from the authors' code, and why:

- Centring: the authors' randomized PCA (``gen_topK_colspace``, used for their ImageNet basis) does not
  centre, their exact path (sklearn ``PCA``) does. We do not centre by default (``center=False``): a
  probe is a direction from the current point, so the uncentred second moment (the energy subspace) is
  the object that matters, and it matches the basis the NLBA/PSBA experiments load.
- Solver: exact (thin SVD, or the eigen-decomposition of the d x d Gram matrix) up to ``EXACT_MAX_DIM``
  input dimensions (MNIST); above it a seeded randomized range finder (Halko et al. 2011) with
  ``OVERSAMPLE`` extra directions, ``n_iter=4`` QR-normalised power iterations and a final SVD, so the
  basis is ordered by energy (the authors: k directions, LU-normalised, ``n_iter=1``, no final SVD).
- ``basis_only`` probes get a random sign (``random_sign=True``): the authors return ``+e_i``. A
  symmetric (zero-mean) probe distribution is what the HSJA estimator's unbiasedness argument assumes;
  ``random_sign=False`` restores the authors' behaviour.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from advsuite.attacks.boundary.priors.base import Prior, qeba_subspace_fraction
from advsuite.errors import ConfigError

#: inputs up to this many dimensions get the exact decomposition (MNIST: yes; CIFAR's 3072: randomized,
#: ~50x faster on a CPU than a 3072 x 3072 eigen-decomposition)
EXACT_MAX_DIM = 1024
#: extra random directions of the randomized range finder (Halko et al. 2011 recommend 5-10)
OVERSAMPLE = 10


def default_components(input_shape: tuple[int, ...]) -> int:
    """The authors' basis sizes (:func:`qeba_subspace_fraction`): d/4 up to 64 px (768 for CIFAR-10, 196 for
    MNIST), d/16 above (9408 for 3x224x224)."""
    d = 1
    for s in input_shape:
        d *= int(s)
    return max(1, round(d * qeba_subspace_fraction(input_shape)))


class PCAPrior(Prior):
    """A (k, d) orthonormal basis; probes are single basis vectors or Gaussian combinations of them.

    ``basis_only=True`` (the authors' QEBA-I, ``PCA9408basis``): each probe is one basis vector chosen
    uniformly at random (with a random sign unless ``random_sign=False``). ``basis_only=False``: each
    probe is ``z @ basis`` with ``z ~ N(0, I_k)``.
    """

    kind = "pca"
    basis: torch.Tensor

    def __init__(
        self, input_shape: tuple[int, int, int], components: int, basis_only: bool = True, random_sign: bool = True
    ) -> None:
        super().__init__(input_shape)
        d = 1
        for s in self.input_shape:
            d *= s
        if not 1 <= int(components) <= d:
            raise ConfigError(f"PCA components must be in [1, {d}] for inputs {self.input_shape}, got {components}")
        self.components = int(components)
        self.basis_only = bool(basis_only)
        self.random_sign = bool(random_sign)
        self.register_buffer("basis", torch.zeros(self.components, d))
        #: filled by :func:`fit_pca` (explained energy, solver, seconds); recorded in the cache metadata
        self.train_metrics: dict[str, Any] = {}

    def config(self) -> dict[str, Any]:
        return {
            "input_shape": list(self.input_shape),
            "components": self.components,
            "basis_only": self.basis_only,
            "random_sign": self.random_sign,
        }

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        basis = self.basis
        if self.basis_only:
            out = basis[torch.randint(self.components, (n,), generator=generator, device=basis.device)]
            if self.random_sign:
                sign = torch.randint(0, 2, (n, 1), generator=generator, device=basis.device) * 2 - 1
                out = out * sign.to(out.dtype)
        else:
            out = torch.randn(n, self.components, generator=generator, device=basis.device) @ basis
        return out.view(n, *self.input_shape)


def _fix_signs(vectors: torch.Tensor) -> torch.Tensor:
    """Rows with their largest-magnitude entry positive: a solver-independent, reproducible sign."""
    pick = vectors.abs().argmax(1, keepdim=True)
    return vectors * torch.where(vectors.gather(1, pick) < 0, -1.0, 1.0)


def _exact(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k right singular vectors (rows) and squared singular values of ``x``, exactly.

    Fewer rows than dimensions: a thin SVD (cost N^2 d). Otherwise the eigen-decomposition of the d x d Gram
    matrix, accumulated in float64 and decomposed in float32 (float64 ``eigh`` is ~6x slower on a CPU and the
    top components do not need it).
    """
    n, d = x.shape
    if n <= d:
        _, s, vt = torch.linalg.svd(x, full_matrices=False)
        return vt[:k], s[:k].square()
    gram = torch.zeros(d, d, dtype=torch.float64)
    for chunk in x.split(4096):
        c = chunk.double()
        gram += c.T @ c
    values, vectors = torch.linalg.eigh(gram.float())
    return vectors[:, -k:].flip(1).T.contiguous(), values[-k:].flip(0).clamp(min=0)


def _randomized(x: torch.Tensor, k: int, n_iter: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k right singular vectors (rows) and squared singular values by a randomized range finder."""
    width = min(k + OVERSAMPLE, min(x.shape))
    q = torch.linalg.qr(x.T @ torch.randn(x.shape[0], width, generator=gen).to(x))[0]  # (d, width)
    for _ in range(n_iter):
        q = torch.linalg.qr(x.T @ (x @ q))[0]
    _, s, vt = torch.linalg.svd(x @ q, full_matrices=False)
    return (q @ vt.T)[:, :k].T.contiguous(), s[:k].square()


def fit_pca(
    grads: torch.Tensor,
    k: int | None = None,
    *,
    seed: int = 0,
    basis_only: bool = True,
    random_sign: bool = True,
    center: bool = False,
    method: str = "auto",
    n_iter: int = 4,
) -> PCAPrior:
    """A :class:`PCAPrior` from (N, C, H, W) gradients; ``k`` defaults to d/16 (see the module docstring).

    ``method``: ``exact`` | ``randomized`` | ``auto`` (exact up to ``EXACT_MAX_DIM`` dimensions).
    """
    if grads.dim() != 4:
        raise ConfigError(f"fit_pca needs (N, C, H, W) gradients, got shape {tuple(grads.shape)}")
    if method not in ("auto", "exact", "randomized"):
        raise ConfigError(f"PCA method must be auto, exact or randomized, got {method!r}")
    shape = tuple(int(s) for s in grads.shape[1:])
    k = default_components(shape) if k is None else int(k)
    x = grads.detach().flatten(1).float().cpu()
    n, d = x.shape
    if not 1 <= k <= min(n, d):
        raise ConfigError(
            f"PCA components={k} must be in [1, min(N, d)] = [1, {min(n, d)}] for {n} gradients of dimension {d}; "
            "raise prior.n_images or lower prior.components"
        )
    if center:
        x = x - x.mean(0, keepdim=True)
    start = time.perf_counter()
    solver = "exact" if method == "exact" or (method == "auto" and d <= EXACT_MAX_DIM) else "randomized"
    if solver == "exact":
        basis, energy = _exact(x, k)
    else:
        basis, energy = _randomized(x, k, n_iter, torch.Generator().manual_seed(seed))
    prior = PCAPrior(shape, k, basis_only=basis_only, random_sign=random_sign)  # type: ignore[arg-type]
    prior.basis.copy_(_fix_signs(basis))
    total = float(x.square().sum())
    prior.train_metrics = {
        "solver": solver,
        "centered": bool(center),
        "n_gradients": n,
        "explained_energy": float(energy.sum()) / total if total > 0 else 0.0,
        "fit_seconds": time.perf_counter() - start,
    }
    return prior

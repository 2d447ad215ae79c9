"""Learned priors: the PCA basis, reference gradients, the prior cache and ``task=prior``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_module

from advsuite.artifacts import cache_root
from advsuite.attacks.boundary.priors import PCAPrior, Prior, fit_pca, load_prior, prior_from_cache
from advsuite.attacks.boundary.priors.base import probe_spread
from advsuite.attacks.boundary.priors.pca import default_components
from advsuite.attacks.boundary.priors.store import (
    KIND_DEFAULTS,
    _fit_kwargs,
    cache_key,
    prior_kind,
    resolve_spec,
)
from advsuite.data import DataBundle, ImageArrayDataset
from advsuite.errors import ConfigError
from advsuite.models.archs import build_classifier
from advsuite.models.surrogates import (
    REFERENCE_POOL,
    _fetch,
    assign_batches,
    gradient_data,
    input_gradients,
    load_references,
)

# statistical assertions on trained models: rerun under other CPU kernels by scripts/test.sh
pytestmark = pytest.mark.numerics

ROOT = Path(__file__).resolve().parents[1]

# Two tiny references (both smallcnn-shaped, so no test trains a big network) and a recipe of a few steps.
TINY_A = {"name": "tiny_a", "arch": "smallcnn", "kwargs": {"channels": [4, 8], "hidden": 16}}
TINY_B = {"name": "tiny_b", "arch": "smallcnn", "kwargs": {"channels": [6, 8], "hidden": 16}}
TINY_RECIPE = {"epochs": 1, "train_subset": 512, "test_subset": 200, "batch_size": 64}


def pca_spec(**extra: object) -> dict[str, object]:
    spec = {"kind": "pca", "references": [TINY_A, TINY_B], "n_images": 96, "reference_recipe": TINY_RECIPE}
    return {**spec, "components": 8, **extra}


def low_rank_grads(n: int = 200, rank: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, 8, 8) data in a known rank-``rank`` subspace plus a little noise, and that subspace (rank, 64)."""
    gen = torch.Generator().manual_seed(seed)
    span = torch.linalg.qr(torch.randn(64, rank, generator=gen))[0].T
    scales = torch.linspace(3.0, 1.0, rank)
    x = (torch.randn(n, rank, generator=gen) * scales) @ span + 0.01 * torch.randn(n, 64, generator=gen)
    return x.view(n, 1, 8, 8), span


# ------------------------------------------------------------------------------------------------ PCA


@pytest.mark.parametrize("method", ["exact", "randomized"])
def test_pca_basis_is_orthonormal_and_spans_the_data(method: str) -> None:
    grads, span = low_rank_grads()
    prior = fit_pca(grads, 5, method=method, seed=0)
    basis = prior.basis
    assert basis.shape == (5, 64)
    torch.testing.assert_close(basis @ basis.T, torch.eye(5), atol=1e-5, rtol=0)
    # the true subspace lies in the fitted one: projecting it loses (almost) nothing
    residual = span - (span @ basis.T) @ basis
    assert residual.norm() < 0.05
    assert prior.train_metrics["explained_energy"] > 0.99
    assert prior.train_metrics["solver"] == method


def test_exact_and_randomized_pca_agree_and_default_k_follows_the_authors_sizes() -> None:
    grads, _ = low_rank_grads(n=300, rank=8)
    exact = fit_pca(grads, 4, method="exact").basis
    approx = fit_pca(grads, 4, method="randomized", seed=3).basis
    torch.testing.assert_close(exact.T @ exact, approx.T @ approx, atol=1e-3, rtol=0)  # same projector
    assert fit_pca(grads).components == 16  # 64 / 4 (8 px: a small input)
    assert default_components((1, 28, 28)) == 196  # d/4 up to 64 px, as the authors' CIFAR basis
    assert default_components((3, 32, 32)) == 768  # the authors' CIFAR-10 basis
    assert default_components((3, 224, 224)) == 9408  # the authors' N_b
    with pytest.raises(ConfigError, match="n_images"):
        fit_pca(grads[:3], 4)  # more components than gradients


def test_basis_only_probes_are_signed_basis_vectors() -> None:
    prior = fit_pca(low_rank_grads()[0], 5)
    probes = prior.sample(200, torch.Generator().manual_seed(0)).flatten(1)
    assert probes.shape == (200, 64)
    match = probes @ prior.basis.T  # each row: one entry +-1, the rest 0
    assert torch.allclose(match.abs().amax(1), torch.ones(200), atol=1e-5)
    assert torch.allclose(match.abs().sum(1), torch.ones(200), atol=1e-4)
    picked = match.abs().argmax(1)
    assert len(picked.unique()) == 5  # every basis vector gets drawn
    signs = match.gather(1, picked[:, None]).sign()
    assert (signs > 0).any() and (signs < 0).any()

    unsigned = PCAPrior((1, 8, 8), 5, basis_only=True, random_sign=False)
    unsigned.basis.copy_(prior.basis)
    match = unsigned.sample(100, torch.Generator().manual_seed(0)).flatten(1) @ prior.basis.T
    assert (match.amax(1) > 0.999).all()  # the authors' behaviour: always +e_i


def test_gaussian_probes_lie_in_the_span_and_sampling_is_seeded() -> None:
    fitted = fit_pca(low_rank_grads()[0], 5, basis_only=False)
    probes = fitted.sample(50, torch.Generator().manual_seed(1)).flatten(1)
    in_span = (probes @ fitted.basis.T) @ fitted.basis
    torch.testing.assert_close(probes, in_span, atol=1e-5, rtol=0)
    assert (probes @ fitted.basis.T).abs().amax(1).lt(probes.norm(dim=1) - 1e-3).any()  # combinations, not atoms
    for prior in (fitted, fit_pca(low_rank_grads()[0], 5)):
        first = prior.sample(20, torch.Generator().manual_seed(7))
        again = prior.sample(20, torch.Generator().manual_seed(7))
        other = prior.sample(20, torch.Generator().manual_seed(8))
        assert torch.equal(first, again)
        assert not torch.equal(first, other)


# ------------------------------------------------------------------------------------------------ specs


def test_pca_cache_key_names_the_default_basis_size(mnist: DataBundle) -> None:
    spec = lambda k: resolve_spec({"kind": "pca", "components": k}, "smallcnn")  # noqa: E731
    k = default_components(mnist.input_shape)
    assert cache_key(spec(None), mnist, 0) == cache_key(spec(k), mnist, 0)  # a new default gets a new entry
    assert cache_key(spec(None), mnist, 0) != cache_key(spec(k // 4), mnist, 0)


def test_spec_validation() -> None:
    with pytest.raises(ConfigError, match="components") as info:
        resolve_spec({"kind": "pca", "latent_channels": 4})  # an AE key on a PCA prior
    assert "latent_channels" in str(info.value) and "basis_only" in str(info.value)
    with pytest.raises(ConfigError, match="pca, ae, vae, gan, pgan"):
        resolve_spec({"kind": "diffusion"})
    with pytest.raises(ConfigError, match="valid zoo model configs"):
        resolve_spec({"kind": "pca", "references": ["no_such_model"]})
    with pytest.raises(ConfigError, match="recipe"):
        resolve_spec({"kind": "pca", "reference_recipe": {"epochz": 1}})
    with pytest.raises(ConfigError, match="n_images"):
        resolve_spec({"kind": "pca", "n_images": 0})
    resolved = resolve_spec({"kind": "ae"})
    assert resolved["epochs"] == 8 and resolved["references"] == list(REFERENCE_POOL[:2])


def test_victim_architecture_is_never_a_reference() -> None:
    with pytest.raises(ConfigError, match="victim"):
        resolve_spec({"kind": "pca", "references": ["resnet18", "smallcnn"]}, victim_arch="smallcnn")
    with pytest.raises(ConfigError, match="victim"):
        resolve_spec({"kind": "pca", "references": [TINY_A]}, victim_arch="smallcnn")  # inline spec, same arch
    for victim in REFERENCE_POOL:
        refs = resolve_spec({"kind": "pca", "references": "auto"}, victim_arch=victim)["references"]
        assert len(refs) == 2 and victim not in refs


@pytest.mark.parametrize("kind", ["pca", "ae", "vae", "gan", "pgan"])
def test_prior_configs_compose_and_match_the_python_defaults(kind: str) -> None:
    with initialize_config_module(config_module="advsuite.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["task=prior", f"prior={kind}"])
    resolved = resolve_spec(cfg.prior, victim_arch=cfg.model.arch)
    assert resolved == resolve_spec({"kind": kind}, victim_arch=cfg.model.arch)  # the YAML restates the defaults
    assert cfg.model.arch not in resolved["references"]


@pytest.mark.parametrize("kind", ["pca", "ae", "vae", "gan", "pgan"])
def test_every_spec_key_reaches_the_fit_function(kind: str) -> None:
    cls, fit = prior_kind(kind)
    assert cls.kind == kind
    kwargs = _fit_kwargs(kind, fit, resolve_spec({"kind": kind}))
    assert set(kwargs) >= set(KIND_DEFAULTS[kind]) - {"components"}  # none silently dropped


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_auto_reference_pool_builds_for_grey_and_colour(shape: tuple[int, int, int]) -> None:
    bundle = DataBundle("fake", train=[], test=[], num_classes=10, input_shape=shape)  # type: ignore[arg-type]
    for arch in REFERENCE_POOL:
        model = build_classifier(arch, bundle).eval()
        with torch.no_grad():
            assert model(torch.rand(2, *shape)).shape == (2, 10)


# ------------------------------------------------------------------------------------------------ gradients


def test_gradients_are_unit_norm_and_come_from_the_training_split(mnist: DataBundle) -> None:
    refs = [TINY_A, TINY_B]
    data = gradient_data(refs, mnist, n_images=70, device="cpu", seed=0, verbose=False, recipe_overrides=TINY_RECIPE)
    grads = data.grads
    assert grads.shape[1:] == (1, 28, 28) and 60 <= len(grads) <= 70
    torch.testing.assert_close(grads.flatten(1).norm(dim=1), torch.ones(len(grads)))
    assert set(data.sources.tolist()) == {0, 1}  # both references contribute
    assert data.indices.max() < len(mnist.train) and len(data.indices.unique()) == len(data.indices)
    # each gradient is the reference's input gradient at that TRAINING image, normalised
    models = load_references(refs, mnist, device="cpu", verbose=False, recipe_overrides=TINY_RECIPE)
    train_x = mnist.train.tensors[0]  # type: ignore[attr-defined]
    for row in (0, len(grads) - 1):
        model = models[int(data.sources[row])]
        expected = input_gradients(model, train_x[data.indices[row]][None])
        expected = expected / expected.norm()
        torch.testing.assert_close(grads[row : row + 1], expected, atol=1e-4, rtol=1e-3)
    # any map-style dataset works, not only in-memory tensors
    stored = ImageArrayDataset((train_x[:10] * 255).round().to(torch.uint8), torch.zeros(10))
    picked = torch.tensor([7, 2])
    torch.testing.assert_close(_fetch(stored, picked), stored.x[picked].float() / 255)
    # the 'rnd' mixing: every reference gets an equal share of the batches, in a seeded random order
    owners = assign_batches(10, 3, seed=0)
    assert sorted(owners.bincount().tolist()) == [3, 3, 4]
    assert torch.equal(owners, assign_batches(10, 3, seed=0))


# ------------------------------------------------------------------------------------------------ cache


def test_cache_round_trip_loads_without_retraining(mnist: DataBundle, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_prior(pca_spec(), mnist, device="cpu", verbose=False, victim_arch="cifarcnn")
    assert isinstance(first, PCAPrior) and first.info["source"] == "trained"
    entry = Path(first.info["path"])
    assert entry.parent == cache_root() / "priors" / "mnist5k" and entry.name.startswith("pca-")
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["kind"] == "pca" and meta["config"]["components"] == 8
    assert meta["n_gradients"] == first.info["n_gradients"] and meta["input_shape"] == [1, 28, 28]
    assert [r["weights_hash"] for r in meta["references"]] and meta["dataset"]["name"] == "mnist5k"

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached prior was rebuilt")

    monkeypatch.setattr("advsuite.attacks.boundary.priors.pca.fit_pca", boom)
    monkeypatch.setattr("advsuite.models.surrogates.gradient_data", boom)
    second = load_prior(pca_spec(), mnist, device="cpu", verbose=False, victim_arch="cifarcnn")
    assert second.info["source"] == "cache"
    assert torch.equal(second.basis, first.basis)
    rebuilt = prior_from_cache(entry)
    assert isinstance(rebuilt, PCAPrior) and torch.equal(rebuilt.basis, first.basis)
    # another seed or another spec is another entry (and here would need the patched fit)
    with pytest.raises(AssertionError, match="rebuilt"):
        load_prior(pca_spec(components=7), mnist, device="cpu", verbose=False)


@pytest.mark.parametrize("damage", ["garbage_weights", "missing_meta"])
def test_corrupt_or_partial_entry_is_rebuilt_with_a_warning(mnist: DataBundle, damage: str) -> None:
    spec = pca_spec(components=6, basis_only=False)
    first = load_prior(spec, mnist, device="cpu", verbose=False)
    entry = Path(first.info["path"])
    if damage == "garbage_weights":
        (entry / "prior.safetensors").write_bytes(b"not a safetensors file")
    else:
        (entry / "meta.json").unlink()
    with pytest.warns(UserWarning, match="unusable"):
        again = load_prior(spec, mnist, device="cpu", verbose=False)
    assert again.info["source"] == "trained"
    assert torch.equal(again.basis, first.basis)  # deterministic rebuild
    assert load_prior(spec, mnist, device="cpu", verbose=False).info["source"] == "cache"


def test_ae_prior_is_cached_like_pca(mnist: DataBundle) -> None:
    spec = {
        "kind": "ae",
        "references": [TINY_A],
        "n_images": 64,
        "reference_recipe": TINY_RECIPE,
        "epochs": 1,
        "batch_size": 32,
    }
    first = load_prior(spec, mnist, device="cpu", verbose=False)
    assert first.kind == "ae" and first.info["source"] == "trained"
    second = load_prior(spec, mnist, device="cpu", verbose=False)
    assert second.info["source"] == "cache" and type(second) is type(first)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert torch.equal(a.cpu(), b.cpu()), name
    gen = torch.Generator().manual_seed(0)
    assert second.sample(3, gen).shape == (3, 1, 28, 28)


# ------------------------------------------------------------------------------------------------ CLI


class _SubspacePrior(Prior):
    """Gaussian probes in the span of the first ``k`` pixels, plus ``spike`` times one fixed direction."""

    def __init__(self, k: int, spike: float = 0.0) -> None:
        super().__init__((1, 8, 8))
        self.k, self.spike = k, spike

    def config(self) -> dict[str, Any]:
        return {"k": self.k, "spike": self.spike}

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        out = torch.zeros(n, 64)
        out[:, : self.k] = torch.randn(n, self.k, generator=generator)
        out[:, -1] += self.spike
        return out.view(n, 1, 8, 8)


def test_probe_spread_counts_the_directions_probes_explore() -> None:
    wide = probe_spread(_SubspacePrior(16), n=2000)
    assert 14 < wide["effective_dim"] <= 16 and 14 <= wide["rank"] <= 16
    collapsed = probe_spread(_SubspacePrior(16, spike=20.0), n=2000)  # one direction dominates every probe
    assert collapsed["effective_dim"] < 1.2 and collapsed["rank"] >= 16
    assert probe_spread(_SubspacePrior(16), n=2000, seed=3) == probe_spread(_SubspacePrior(16), n=2000, seed=3)

"""Neural probe priors: NonLinear-BA's AE / VAE / GAN and PSBA's progressive GAN (tiny, CPU-only)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from advsuite.attacks.boundary.priors.base import Prior
from advsuite.errors import ConfigError
from advsuite.generative.autoencoder import VAE, AutoEncoder, fit_autoencoder, unit_l2
from advsuite.generative.gan import GAN, fit_gan
from advsuite.generative.pgan import ProgressiveGAN, fit_pgan

# statistical assertions on trained models: rerun under other CPU kernels by scripts/test.sh
pytestmark = pytest.mark.numerics

CLASSES = [AutoEncoder, VAE, GAN, ProgressiveGAN]
SHAPES = [(1, 28, 28), (3, 32, 32), (2, 29, 23)]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def pattern_data(n: int, shape: tuple[int, int, int], signed: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-L2 'gradients' = (+-) a low-frequency pattern + noise, and the unit pattern."""
    c, h, w = shape
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    pat = (torch.sin(3 * xx) * torch.cos(2 * yy)).expand(c, h, w)
    g = gen(0)
    sign = torch.randint(0, 2, (n, 1, 1, 1), generator=g) * 2 - 1 if signed else torch.ones(n, 1, 1, 1)
    x = sign * pat + 0.3 * torch.randn(n, c, h, w, generator=g)
    return unit_l2(x), unit_l2(pat[None])[0]


def alignment(samples: torch.Tensor, pat: torch.Tensor) -> float:
    """Mean |cosine| between samples and the pattern (~1/sqrt(d) for random directions)."""
    return (unit_l2(samples).flatten(1) @ pat.flatten()).abs().mean().item()


COMMON = {"seed": 0, "device": "cpu", "batch_size": 16}


@pytest.fixture(scope="module")
def fitted_ae() -> AutoEncoder:
    torch.manual_seed(123)  # the fits must not depend on the global RNG: it is forked and re-seeded inside
    return fit_autoencoder(pattern_data(64, (1, 16, 16))[0], variational=False, epochs=20, **COMMON)


@pytest.fixture(scope="module")
def fitted_vae() -> AutoEncoder:
    return fit_autoencoder(pattern_data(64, (1, 16, 16))[0], variational=True, epochs=20, **COMMON)


@pytest.fixture(scope="module")
def fitted_gan() -> GAN:
    return fit_gan(pattern_data(64, (1, 16, 16))[0], epochs=40, lr=2e-4, **COMMON)


@pytest.fixture(scope="module")
def fitted_pgan() -> ProgressiveGAN:
    return fit_pgan(pattern_data(64, (1, 8, 8), signed=False)[0], epochs_per_scale=30, depths=[16, 16], **COMMON)


@pytest.fixture
def fitted(request: pytest.FixtureRequest) -> Prior:
    """The tiny trained prior (16x16x1 or 8x8x1, 64 samples) of the test's ``kind``, trained once per module."""
    return request.getfixturevalue(f"fitted_{request.node.callspec.params['kind']}")


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("shape", SHAPES)
def test_sample_shapes_and_determinism(cls: type[Prior], shape: tuple[int, int, int]) -> None:
    prior = cls(shape)  # type: ignore[call-arg]
    a = prior.sample(5, gen(0))
    assert a.shape == (5, *shape) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert not a.requires_grad
    assert torch.equal(a, prior.sample(5, gen(0)))
    assert not torch.allclose(a, prior.sample(5, gen(1)))
    assert prior.training  # sampling switches to eval mode only for the call
    if cls in (AutoEncoder, VAE):
        torch.testing.assert_close(a.flatten(1).norm(dim=1), torch.ones(5))


def test_authors_sizes_at_224() -> None:
    """At 224x224x3 the defaults give the authors' latent sizes: 48x14x14 = 9408 (AE/VAE), 9408 (GAN, PGAN)."""
    ae = AutoEncoder((3, 224, 224))
    assert ae.n_down == 4 and ae.latent_shape == (48, 14, 14)
    assert GAN((3, 224, 224)).latent_dim == 9408
    pgan = ProgressiveGAN((3, 224, 224))
    assert pgan.latent_dim == 9408
    assert pgan.scale_sizes == [(7, 7), (14, 14), (28, 28), (56, 56), (112, 112), (224, 224)]


@pytest.mark.parametrize(
    ("shape", "sizes"),
    [
        ((1, 28, 28), [(7, 7), (14, 14), (28, 28)]),
        ((3, 32, 32), [(4, 4), (8, 8), (16, 16), (32, 32)]),
        ((2, 29, 23), [(8, 6), (16, 12), (29, 23)]),
    ],
)
def test_pgan_sample_at_sizes(shape: tuple[int, int, int], sizes: list[tuple[int, int]]) -> None:
    prior = ProgressiveGAN(shape)
    assert prior.scale_sizes == sizes and prior.n_scales == len(sizes)
    for s, (h, w) in enumerate(sizes, start=1):
        out = prior.sample_at(3, gen(0), s)
        assert out.shape == (3, shape[0], h, w) and out.abs().max() <= 1
    torch.testing.assert_close(prior.sample(3, gen(0)), prior.sample_at(3, gen(0), prior.n_scales))
    with pytest.raises(ConfigError):
        prior.sample_at(1, gen(0), prior.n_scales + 1)


def test_bad_configs_raise() -> None:
    with pytest.raises(ConfigError):
        AutoEncoder((1, 28, 28), n_down=2, widths=[8])
    with pytest.raises(ConfigError):
        AutoEncoder((1, 28))  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        GAN((1, 28, 28), widths=[8])
    with pytest.raises(ConfigError):
        ProgressiveGAN((1, 28, 28), depths=[8, 8])


@pytest.mark.parametrize("kind", ["ae", "vae"])
def test_autoencoder_fit_reconstructs_better_than_untrained(fitted: Prior, kind: str) -> None:
    prior = fitted
    assert isinstance(prior, AutoEncoder) and not prior.training
    m = prior.train_metrics
    assert m["final_loss"] < 0.8 * m["initial_loss"]
    x, pat = pattern_data(64, (1, 16, 16))
    untrained = type(prior)(**prior.config())
    cos_trained = (prior.reconstruct(x) * x).flatten(1).sum(1).mean().item()
    cos_untrained = (untrained.reconstruct(x) * x).flatten(1).sum(1).mean().item()
    assert cos_trained > 0.25 > cos_untrained
    assert m["mean_cosine"] == pytest.approx(cos_trained, abs=1e-5)
    assert m["seconds"] > 0 and m["steps"] == 80
    # probes decoded from random latents follow the data's pattern more than random directions (0.06 here)
    assert alignment(prior.sample(100, gen(0)), pat) > 0.1


def test_gan_fit_moves_samples_towards_data(fitted_gan: GAN) -> None:
    prior = fitted_gan
    _, pat = pattern_data(64, (1, 16, 16))
    untrained = GAN(**prior.config())
    assert alignment(prior.sample(200, gen(0)), pat) > 0.4 > 0.1 > alignment(untrained.sample(200, gen(0)), pat)
    assert set(prior.train_metrics) >= {"d_loss", "g_loss", "wasserstein", "seconds"}


def test_pgan_fit_moves_samples_towards_data(fitted_pgan: ProgressiveGAN) -> None:
    prior = fitted_pgan
    _, pat = pattern_data(64, (1, 8, 8), signed=False)
    untrained = ProgressiveGAN(**prior.config())
    assert alignment(prior.sample(200, gen(0)), pat) > alignment(untrained.sample(200, gen(0)), pat) + 0.15
    assert prior.train_metrics["steps"] == 2 * 120


@pytest.mark.parametrize("kind", ["ae", "vae", "gan", "pgan"])
def test_config_round_trip(fitted: Prior, kind: str) -> None:
    prior = fitted
    assert prior.kind == kind
    config = json.loads(json.dumps(prior.config()))
    rebuilt = type(prior)(**config)
    rebuilt.load_state_dict(prior.state_dict())
    torch.testing.assert_close(rebuilt.sample(4, gen(7)), prior.sample(4, gen(7)), rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["ae", "gan"])
def test_fit_is_deterministic(kind: str) -> None:
    x, _ = pattern_data(32, (1, 8, 8))
    fit = {
        "ae": lambda s: fit_autoencoder(x, epochs=1, batch_size=16, seed=s, device="cpu"),
        "gan": lambda s: fit_gan(x, epochs=1, batch_size=16, seed=s, device="cpu"),
    }[kind]
    a, b, c = fit(0), fit(0), fit(1)
    assert torch.equal(a.sample(3, gen(0)), b.sample(3, gen(0)))
    assert not torch.equal(a.sample(3, gen(0)), c.sample(3, gen(0)))


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_psba_runs_on_a_real_pgan_prior(shape: tuple[int, int, int]) -> None:
    """End to end with the real prior class (its scales are (height, width) pairs), untrained weights."""
    from advsuite.attacks.boundary import PSBA
    from advsuite.models import Classifier
    from advsuite.oracles import LabelOracle

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(math.prod(shape), 10))
    model = Classifier(net, num_classes=10, input_shape=shape)
    x = torch.rand(2, *shape, generator=gen(1))
    prior = ProgressiveGAN(shape)
    assert PSBA(prior=prior, scale="auto").chosen_scale(prior) == 1  # the side nearest side / 8: 7 of 28, 4 of 32
    attack = PSBA(prior=prior, budget=300, verbose=False)  # the progressive scale search
    assert attack.chosen_scale(prior) is None
    oracle = LabelOracle(model, 2, 300)
    result = attack(oracle, x, model.predict(x))
    assert bool(result.success.all()) and int(oracle.n_queries.max()) <= 300


def test_pgan_probes_below_full_scale_come_from_the_network_grown_only_to_that_scale() -> None:
    """The authors grow the generator only up to the attack's scale; drawing from the final generator's
    per-scale output layer instead (it stopped training after its stage, the shared layers did not) is stale."""
    x, _ = pattern_data(48, (1, 8, 8))
    settings = {"epochs_per_scale": 2, "depths": [8, 8], **COMMON}
    full, grown = fit_pgan(x, **settings), fit_pgan(x, scales=1, **settings)
    assert len(full.stages) == 1 and full.config()["stages"] == 1
    assert torch.equal(full.sample_at(5, gen(3), 1), grown.sample_at(5, gen(3), 1))
    z = torch.randn(5, full.latent_dim, generator=gen(3))
    with torch.no_grad():
        assert not torch.allclose(full(z, 1), full.stages[0](z))  # the live layers moved on in stage 2
    assert torch.equal(full.sample_at(5, gen(3), 2), full.sample(5, gen(3)))  # the full scale is the live one
    rebuilt = ProgressiveGAN(**json.loads(json.dumps(full.config())))
    rebuilt.load_state_dict(full.state_dict())
    assert torch.equal(rebuilt.sample_at(5, gen(3), 1), full.sample_at(5, gen(3), 1))


def test_the_shipped_pgan_recipe_learns() -> None:
    """conf/prior/pgan.yaml's learning rate and batch learn a two-mode 7x7 set within 300 steps, and its
    schedule gives every scale at least that many steps (the former lr 2e-4 and 62 steps learned nothing)."""
    from importlib.resources import files

    from omegaconf import OmegaConf

    from advsuite.attacks.boundary.priors.store import resolve_spec

    shipped = OmegaConf.load(str(files("advsuite.conf") / "prior" / "pgan.yaml"))
    spec = resolve_spec(shipped, victim_arch="smallcnn")
    steps_per_scale = spec["epochs_per_scale"] * (spec["n_images"] // spec["batch_size"])
    assert steps_per_scale >= 300
    x, pat = pattern_data(480, (1, 7, 7))
    epochs = 300 / (len(x) // spec["batch_size"])
    prior = fit_pgan(x, lr=spec["lr"], batch_size=spec["batch_size"], epochs_per_scale=epochs, seed=0, device="cpu")
    assert prior.train_metrics["steps"] == 300
    assert alignment(prior.sample(300, gen(0)), pat) > 0.5  # 0.71 measured; lr 2e-4: 0.09, chance level

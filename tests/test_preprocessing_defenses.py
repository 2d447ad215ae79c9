"""Preprocessing defenses: JPEG, median smoothing, random resize-and-pad, Gaussian noise, chains, and the
checks ``defend`` puts around any defense."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from PIL import Image

from advsuite.data import DataBundle, as_tensors
from advsuite.defense import Defense, defend
from advsuite.defenses import JPEG, BitDepthReduction, Chain, GaussianNoise, MedianSmoothing, RandomResizePad
from advsuite.errors import ConfigError, ModelError
from advsuite.models import Classifier

ALL = {
    "jpeg": lambda: JPEG(75),
    "median": lambda: MedianSmoothing(3),
    "random_resize_pad": lambda: RandomResizePad(1.2, seed=1),
    "gaussian_noise": lambda: GaussianNoise(0.1, seed=1),
    "chain": lambda: Chain([JPEG(90), BitDepthReduction(4)]),
}


@pytest.fixture(scope="module")
def images(mnist: DataBundle) -> torch.Tensor:
    return as_tensors(mnist.test, 8)[0]


@pytest.mark.parametrize("name", sorted(ALL))
def test_a_defense_keeps_shape_and_bounds_and_says_if_it_is_random(name: str, images: torch.Tensor) -> None:
    defense = ALL[name]()
    out, again = defense(images), defense(images)
    assert out.shape == images.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    assert not torch.equal(out, images)  # it does something
    assert defense.randomized == (not torch.equal(out, again))
    if defense.randomized:  # reproducible from its seed
        assert torch.equal(ALL[name]()(images), out)


def test_jpeg_is_libjpeg_and_its_approximation_tracks_it(images: torch.Tensor) -> None:
    jpeg = JPEG(50, surrogate="approx")
    buffer = io.BytesIO()
    Image.fromarray((images[0, 0] * 255).round().to(torch.uint8).numpy()).save(buffer, "JPEG", quality=50)
    expected = torch.from_numpy(np.array(Image.open(buffer))).float() / 255
    assert torch.equal(jpeg(images)[0, 0], expected)
    expected = jpeg(images)
    gap = float((jpeg.surrogate(images) - expected).abs().mean()) * 255
    assert gap < 1.5, gap  # grey levels; seen: 0.5-1.2 on MNIST and CIFAR-10 at quality 30-95
    assert gap < float((images - expected).abs().mean()) * 255  # closer to JPEG than doing nothing is
    colour = torch.rand(2, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    noise_gap = float((jpeg.surrogate(colour) - jpeg(colour)).abs().mean()) * 255
    assert noise_gap < float((colour - jpeg(colour)).abs().mean()) * 255 / 2, noise_gap  # noise: the hardest case


def test_random_resize_pad_pads_with_zeros_somewhere(images: torch.Tensor) -> None:
    out = RandomResizePad(1.5, seed=0)(torch.ones_like(images))
    border = torch.cat([out[..., 0, :], out[..., -1, :], out[..., :, 0], out[..., :, -1]], -1)
    assert float(border.min()) < 0.5 and float(out.max()) > 0.99


@pytest.mark.parametrize("defense", [BitDepthReduction(4), JPEG(75)], ids=["bit_depth", "jpeg"])
def test_bpda_gives_gradients_where_autograd_sees_none(
    tiny_model: Classifier, images: torch.Tensor, defense: Defense
) -> None:
    def gradient(model: Classifier) -> torch.Tensor:
        x = images.clone().requires_grad_(True)
        torch.nn.functional.cross_entropy(model(x), model.predict(images)).backward()
        assert x.grad is not None
        return x.grad

    assert float(gradient(defend(tiny_model, defense)).abs().sum()) > 0
    assert float(gradient(defend(tiny_model, defense, bpda=False)).abs().sum()) == 0  # the naive attack's view


def test_chain_flags_name_and_surrogate(images: torch.Tensor) -> None:
    chain = Chain([MedianSmoothing(2), GaussianNoise(0.05), BitDepthReduction(3)])
    assert chain.randomized and not chain.differentiable and chain.name == "median+gaussian_noise+bit_depth"
    assert torch.equal(Chain([JPEG(90), BitDepthReduction(4)])(images), BitDepthReduction(4)(JPEG(90)(images)))
    smooth = Chain([MedianSmoothing(2), BitDepthReduction(3)])
    assert torch.equal(smooth.surrogate(images), MedianSmoothing(2)(images))  # rounding's surrogate: identity
    with pytest.raises(ConfigError, match="empty"):
        Chain([])
    with pytest.raises(ConfigError, match=r"defenses\[1\] builds Identity"):
        Chain([JPEG(), torch.nn.Identity()])  # type: ignore[list-item]


def test_the_chain_config_builds_its_members() -> None:
    with initialize_config_module(config_module="advsuite.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["defense=chain"])
    chain = instantiate(cfg.defense)
    assert isinstance(chain, Chain) and chain.name == "jpeg+bit_depth"


class _Shrinks(Defense):
    name = "shrinks"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., 1:, 1:]


class _Brightens(Defense):
    name = "brightens"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


class _Breaks(Defense):
    name = "breaks"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("out of cheese")


@pytest.mark.parametrize(
    ("defense", "says"),
    [
        (_Shrinks(), r"defense 'shrinks' returned \(8, 1, 27, 27\) for a batch of shape \(8, 1, 28, 28\)"),
        (_Brightens(), r"defense 'brightens' returned values in \[0, 2\], outside the model's input bounds"),
        (_Breaks(), r"defense 'breaks' failed on a batch of shape \(8, 1, 28, 28\): RuntimeError: out of cheese"),
    ],
)
def test_a_misbehaving_defense_is_named(tiny_model: Classifier, images: torch.Tensor, defense: Defense, says: str):
    with pytest.raises(ModelError, match=says):
        defend(tiny_model, defense)(images)


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda: JPEG(0), "quality must be a whole number from 1 to 100"),
        (lambda: JPEG(surrogate="exact"), "surrogate must be one of identity, approx"),
        (lambda: RandomResizePad(0.9), r"max_scale must be a number in \(1, 2\]"),
        (lambda: GaussianNoise(0), "sigma must be a number > 0"),
        (lambda: MedianSmoothing(0), "size must be a whole number >= 1"),
    ],
)
def test_bad_defense_options(make, says: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=says):
        make()


def test_the_noise_level_grades_perturbations_and_the_threshold_separates_them(mnist: DataBundle) -> None:
    from advsuite.defenses import PerturbationGrading
    from advsuite.defenses.perturbation_grading import calibrate_threshold, noise_level

    x = as_tensors(mnist.test, 24)[0]
    gen = torch.Generator().manual_seed(0)
    levels = [
        float(noise_level((x + s * torch.randn(x.shape, generator=gen)).clamp(0, 1)).mean()) for s in (0, 0.03, 0.1)
    ]
    assert levels == sorted(levels) and levels[2] > 3 * levels[1] > 0, levels
    attacked = (x + 0.2 * torch.sign(torch.randn(x.shape, generator=gen))).clamp(0, 1)
    threshold = calibrate_threshold(x[:12], attacked[:12])
    grading = PerturbationGrading(threshold=threshold, dip_iters=5, dip_channels=8, flip=False)
    assert bool(grading.grade(attacked[12:]).all()) and not bool(grading.grade(x[12:]).any())
    out = grading(torch.cat([x[12:14], attacked[12:14]]))
    assert out.shape == (4, 1, 28, 28) and float(out.min()) >= 0 and float(out.max()) <= 1
    assert not grading.differentiable and torch.equal(PerturbationGrading(1.0).surrogate(x), x.flip(-1))
    with pytest.raises(ConfigError, match="calibrate it on your data"):
        PerturbationGrading(None)


def test_a_randomized_defense_without_eot_is_noted_and_an_unknown_one_lists_the_choices() -> None:
    from hydra.errors import ConfigCompositionException

    from advsuite.attacks.whitebox import APGD, PGD
    from advsuite.tasks.evaluate import note_randomized_without_eot

    metrics: dict[str, object] = {}
    with pytest.warns(RuntimeWarning, match="is randomized.*task=audit"):
        note_randomized_without_eot(GaussianNoise(0.1), PGD(eps=0.1), metrics)
    assert metrics == {"randomized_defense_without_eot": True}
    note_randomized_without_eot(GaussianNoise(0.1), APGD(eps=0.1, eot_iter=20), quiet := {})
    note_randomized_without_eot(JPEG(), PGD(eps=0.1), quiet)
    assert quiet == {}
    with (
        pytest.raises(ConfigCompositionException, match="no_such_defense") as info,
        initialize_config_module(config_module="advsuite.conf", version_base="1.3"),
    ):
        compose(config_name="config", overrides=["defense=no_such_defense"])
    assert "jpeg" in str(info.value) and "perturbation_grading" in str(info.value)

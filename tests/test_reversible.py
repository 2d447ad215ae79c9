"""Reversible adversarial examples: the RDH codec, the payload format, restore() and the attack."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from advsuite.attacks.reversible import (
    Rect,
    RestoreError,
    ReversiblePatch,
    capacity,
    channel_order,
    hide,
    quantise,
    restore,
)
from advsuite.attacks.reversible.payload import Payload, header_length, pack, seal, unpack
from advsuite.attacks.reversible.rdh import pee_embed, pee_extract, shrink, unshrink
from advsuite.data import DataBundle, as_tensors
from advsuite.errors import ConfigError, InputError
from advsuite.evaluation import evaluate
from advsuite.models import Classifier

Batch = tuple[torch.Tensor, torch.Tensor]


def smooth_rgb(seed: int, h: int = 32, w: int = 32) -> np.ndarray:
    """A natural-looking uint8 RGB image: per-channel random walks along rows and columns."""
    rng = np.random.default_rng(seed)
    steps = rng.integers(-3, 4, (3, h, w)).cumsum(2) + rng.integers(-3, 4, (3, h, 1)).cumsum(1)
    return np.clip(rng.integers(40, 200, (3, 1, 1)) + steps, 0, 255).astype(np.uint8)


def saturated(kind: str, c: int, h: int = 24, w: int = 24) -> np.ndarray:
    rng = np.random.default_rng(7)
    if kind == "zeros":
        return np.zeros((c, h, w), np.uint8)
    if kind == "full":
        return np.full((c, h, w), 255, np.uint8)
    if kind == "blocks":  # random 4x4 blocks of black and white
        return np.kron(rng.integers(0, 2, (c, h // 4, w // 4)) * 255, np.ones((1, 4, 4))).astype(np.uint8)
    if kind == "sprinkled":  # black with 5% white pixels and 5% mid-grey ones
        u = rng.random((c, h, w))
        return np.where(u < 0.05, 255, np.where(u < 0.1, 128, 0)).astype(np.uint8)
    out = np.zeros((c, h, w), np.uint8)  # "halves": black left, white right, mid-grey strip
    out[..., w // 2 :] = 255
    out[..., w // 2 - 2 : w // 2] = 128
    return out


def border_rects(h: int, w: int, side: int) -> list[Rect]:
    """A patch at each corner, the middle of each border, and the centre."""
    rows, cols = (0, (h - side) // 2, h - side), (0, (w - side) // 2, w - side)
    return [Rect(t, lft, side, side) for t, lft in itertools.product(rows, cols)]


def patched(original: np.ndarray, rect: Rect, seed: int) -> np.ndarray:
    out = original.copy()
    rng = np.random.default_rng(seed)
    out[:, rect.top : rect.top + rect.height, rect.left : rect.left + rect.width] = rng.integers(
        0, 256, (original.shape[0], rect.height, rect.width)
    )
    return out


def roundtrip(original: np.ndarray, rect: Rect, seed: int = 0, **kw: object) -> np.ndarray:
    """Hide, check the result, restore; returns the reversible example."""
    patch_image = patched(original, rect, seed)
    hidden = hide(original, patch_image, rect, **kw)
    assert hidden.fits, hidden.reason
    assert hidden.image is not None
    mask = rect.mask(*original.shape[1:])
    assert np.array_equal(hidden.image[:, mask], patch_image[:, mask])  # the patch is never touched
    assert hidden.payload_bits <= hidden.capacity_bits
    assert np.array_equal(restore(hidden.image), original)
    return hidden.image


# ----------------------------------------------------------------------------------- RDH layer


@pytest.mark.parametrize("t", [1, 2, 5, 17, 63])
def test_pee_and_shrink_invert_with_random_bits(t: int) -> None:
    rng = np.random.default_rng(t)
    for plane in (rng.integers(0, 256, (17, 13)), np.zeros((9, 9), np.int64), np.full((8, 11), 255)):
        carriers = rng.random(plane.shape) < 0.8
        shrunk, location_map, cuts = shrink(plane, carriers, t)
        assert shrunk[carriers].min() >= t and shrunk[carriers].max() <= 255 - t
        bits = rng.integers(0, 2, plane.size).astype(np.uint8)
        marked, used, cap = pee_embed(shrunk, carriers, t, bits)
        assert used == min(cap, len(bits)) and marked.min() >= 0 and marked.max() <= 255
        assert np.array_equal(marked[~carriers], plane[~carriers])
        assert np.abs(marked - shrunk).max() <= t  # PEE moves a pixel by at most T
        back, extracted = pee_extract(marked, carriers, t)
        assert np.array_equal(back, shrunk)
        assert len(extracted) == cap and np.array_equal(extracted[:used], bits[:used])
        assert not extracted[used:].any()  # padding
        assert np.array_equal(unshrink(back, carriers, t, location_map, cuts), plane)


def test_shrink_cuts_avoid_a_black_background(mnist: DataBundle) -> None:
    x, _ = as_tensors(mnist.test, 1)
    plane = quantise(x)[0, 0].numpy()
    carriers = np.ones(plane.shape, bool)
    _, location_map, (low, _) = shrink(plane, carriers, 4)
    assert low > 3  # the zeros move up unambiguously: they need no location-map bits
    assert len(location_map) < 0.1 * plane.size


# ----------------------------------------------------------------------------------- restore


@pytest.mark.parametrize("seed", range(4))
def test_restore_is_exact_on_rgb_images_with_patches_at_every_border(seed: int) -> None:
    original = smooth_rgb(seed)
    for k, rect in enumerate(border_rects(32, 32, 6)):
        roundtrip(original, rect, seed=k)


def test_restore_is_exact_on_mnist_images(mnist: DataBundle) -> None:
    x, _ = as_tensors(mnist.test, 12)
    images = quantise(x).numpy()
    rects = border_rects(28, 28, 4)
    for i, original in enumerate(images):
        roundtrip(original, rects[i % len(rects)], seed=i)


@pytest.mark.parametrize("kind", ["zeros", "full", "blocks", "sprinkled", "halves"])
@pytest.mark.parametrize("channels", [1, 3])
def test_restore_is_exact_on_saturated_images(kind: str, channels: int) -> None:
    original = saturated(kind, channels)
    for k, rect in enumerate(border_rects(24, 24, 4)):
        roundtrip(original, rect, seed=k)


def test_restore_is_exact_for_every_codec_and_threshold_cap() -> None:
    original = smooth_rgb(11)
    rect = Rect(20, 3, 5, 5)
    for codec, cap in itertools.product(["auto", "zlib", "lzma"], [63, 20]):
        roundtrip(original, rect, codec=codec, max_threshold=cap)
    roundtrip(saturated("zeros", 3), Rect(10, 3, 5, 5), codec="none")  # uncompressed, the location maps need room


def test_restore_accepts_tensors_and_rejects_other_inputs() -> None:
    original = smooth_rgb(3)
    image = roundtrip(original, Rect(4, 4, 6, 6))
    out = restore(torch.from_numpy(image))
    assert isinstance(out, torch.Tensor) and torch.equal(out, torch.from_numpy(original))
    with pytest.raises(InputError, match="uint8"):
        restore(image.astype(np.float32))
    with pytest.raises(InputError, match="C=2"):
        restore(image[:2])
    with pytest.raises(RestoreError, match="header"):
        restore(original)  # a clean image carries no recovery data


# ----------------------------------------------------------------------------------- tampering


def test_every_single_pixel_change_is_detected() -> None:
    """Exhaustive on a small image: +1 or -1 on any one value, inside or outside the patch, raises."""
    original = smooth_rgb(5, 16, 16)
    rect = Rect(7, 6, 3, 3)
    image = roundtrip(original, rect)
    for c, i, j in itertools.product(range(3), range(16), range(16)):
        tampered = image.copy()
        tampered[c, i, j] = image[c, i, j] + 1 if image[c, i, j] < 255 else 254
        with pytest.raises(RestoreError):
            restore(tampered)


def test_tampering_inside_and_outside_the_patch_is_detected(mnist: DataBundle) -> None:
    x, _ = as_tensors(mnist.test, 1)
    original = quantise(x)[0].numpy()
    rect = Rect(10, 10, 5, 5)
    image = roundtrip(original, rect)
    for i, j in [(12, 12), (10, 10), (0, 0), (27, 27), (20, 3), (1, 20)]:  # patch centre and corner, elsewhere
        tampered = image.copy()
        tampered[0, i, j] ^= 0x10
        with pytest.raises(RestoreError):
            restore(tampered)


def test_payload_format_is_versioned_and_checked() -> None:
    rect = Rect(1, 2, 3, 4)
    pixels = np.arange(36, dtype=np.uint8).reshape(3, 3, 4)
    band = np.ones(header_length((3, 10, 10)), np.uint8)
    payload = Payload(rect, pixels, ((5, 200), (0, 256), (0, 256)), band, np.array([1, 0, 1], np.uint8), bytes(16))
    for codec in ("zlib", "lzma", "none"):
        data = pack(payload, codec)
        back = unpack(data, (3, 10, 10))
        assert back.rect == rect and back.digest == seal(payload.digest, data) and back.cuts[0] == (5, 200)
        assert np.array_equal(back.patch_pixels, payload.patch_pixels)
        assert np.array_equal(back.location_bits[:3], payload.location_bits)
    data = pack(payload, "zlib")
    with pytest.raises(RestoreError, match="version"):
        unpack(data[:2] + bytes([9]) + data[3:], (3, 10, 10))
    with pytest.raises(RestoreError):
        unpack(data[:-3], (3, 10, 10))
    with pytest.raises(RestoreError, match="outside"):
        unpack(data, (3, 4, 4))


# ----------------------------------------------------------------------------------- capacity and order


def test_oversized_payload_is_reported_not_fitting() -> None:
    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, (3, 24, 24)).astype(np.uint8)  # noise: the patch pixels do not compress
    rect = Rect(4, 4, 14, 14)
    hidden = hide(original, patched(original, rect, 1), rect)
    assert not hidden.fits and hidden.image is None
    assert hidden.payload_bits > hidden.capacity_bits > 0
    assert "does not fit" in hidden.reason
    assert hidden.capacity_bits == capacity(patched(original, rect, 1), rect.mask(24, 24))
    # a patch that leaves no room for the header at the top or the bottom
    tall = Rect(0, 0, 24, 4)
    assert not hide(original, patched(original, tall, 1), tall).fits


def test_capacity_matches_hide_and_needs_a_rectangle() -> None:
    original = smooth_rgb(2)
    rect = Rect(8, 8, 6, 6)
    image = patched(original, rect, 0)
    hidden = hide(original, image, rect)
    assert hidden.capacity_bits == capacity(image, rect) == capacity(image, rect.mask(32, 32))
    assert 2000 < hidden.capacity_bits < 3 * 32 * 32
    ring = rect.mask(32, 32)
    ring[10, 10] = False
    with pytest.raises(InputError, match="rectangle"):
        capacity(image, ring)


def test_blue_is_filled_first_then_red_then_green() -> None:
    assert channel_order(3) == (2, 0, 1) and channel_order(1) == (0,)
    original = smooth_rgb(4)
    small = Rect(0, 0, 3, 3)  # a small payload fits in blue alone
    image = patched(original, small, 0)
    hidden = hide(original, image, small)
    assert hidden.fits and hidden.image is not None
    assert hidden.thresholds[0] > 0 and hidden.thresholds[1:] == (0, 0)
    assert np.array_equal(hidden.image[:2], image[:2])  # red and green untouched
    assert not np.array_equal(hidden.image[2], image[2])
    large = Rect(10, 10, 9, 9)  # too much for blue: red takes the rest, green stays untouched
    image = patched(original, large, 0)
    hidden = hide(original, image, large)
    assert hidden.fits and hidden.image is not None
    assert hidden.thresholds[0] > 0 and hidden.thresholds[1] > 0 and hidden.thresholds[2] == 0
    assert np.array_equal(hidden.image[1], image[1])
    assert not np.array_equal(hidden.image[0], image[0])


# ----------------------------------------------------------------------------------- the attack


@pytest.fixture(scope="module")
def fitted(tiny_model: Classifier, mnist: DataBundle) -> ReversiblePatch:
    attack = ReversiblePatch(size=0.05, epochs=1, n_train=500, seed=0)
    x, y = as_tensors(mnist.train, 500)
    attack.fit(tiny_model, x, y)
    return attack


def test_attack_returns_reversible_examples_that_differ_only_outside_the_patch(
    fitted: ReversiblePatch, tiny_model: Classifier, test_batch: Batch, mnist: DataBundle
) -> None:
    x, y = test_batch
    result = fitted(tiny_model, x, y)
    plain, rae, outcomes = fitted.make(tiny_model, x)
    assert torch.equal(quantise(result.x_adv), rae)
    assert result.queries.tolist() == [2] * len(x)
    assert result.extras["fit_queries"] == 500
    side = fitted.side(tiny_model.input_shape)
    assert side == 6
    tops, lefts = fitted.positions(quantise(x), side)
    reversible = result.extras["reversible"]
    assert sum(reversible) >= len(x) // 2
    for i, ok in enumerate(reversible):
        rect = Rect(int(tops[i]), int(lefts[i]), side, side)
        changed = (rae[i] != plain[i]).any(0).numpy()
        assert not (changed & rect.mask(28, 28)).any()
        if ok:
            assert changed.any() and np.array_equal(restore(rae[i].numpy()), quantise(x[i]).numpy())
        else:
            assert not changed.any() and not outcomes[i].fits
    # deterministic, and the same positions whatever the batch
    again = ReversiblePatch(size=0.05, epochs=1, n_train=500, seed=0)
    again.fit(tiny_model, *as_tensors(mnist.train, 500))
    assert torch.equal(again(tiny_model, x[3:9], y[3:9]).x_adv, result.x_adv[3:9])


def test_evaluate_reports_reversibility_metrics(fitted: ReversiblePatch, tiny_model: Classifier, mnist: DataBundle):
    x, y = as_tensors(mnist.test, 60)
    ev = evaluate(tiny_model, fitted, x, y, batch_size=16, verbose=False)
    m = ev.metrics
    assert m["restored_exact"] == 1.0
    assert m["n_reversible"] + m["n_not_fitting"] == m["n_attacked"]
    assert m["n_reversible"] >= 0.6 * m["n_attacked"]
    assert 0 < m["payload_bits_mean"] < m["capacity_bits_mean"] < 28 * 28
    assert m["psnr_mean"] < m["plain_psnr_mean"]  # the embedding adds distortion to the patch's
    assert m["patch_success"] is not None and m["plain_patch_success"] is not None
    assert m["patch_fit_queries"] == 500 and m["mean_queries"] == 2
    # a fresh instance (no records) measures the same
    fresh = ReversiblePatch(size=0.05, epochs=1, n_train=500, seed=0)
    fresh.fit(tiny_model, *as_tensors(mnist.train, 500))
    again = fresh.extra_metrics(tiny_model, x, y, ev.x_adv, ev.attacked, targets=None, batch_size=16)
    assert again["n_not_fitting"] == m["n_not_fitting"] and again["restored_exact"] == 1.0
    # an altered example counts as not restored
    broken = ev.x_adv.clone()
    first = int(ev.attacked.nonzero()[0])
    broken[first] = x[first]
    out = fitted.extra_metrics(tiny_model, x, y, broken, ev.attacked, targets=None, batch_size=16)
    assert out["restored_exact"] is not None and out["restored_exact"] < 1.0


def test_images_that_do_not_fit_keep_the_plain_patch(
    tiny_model: Classifier, test_batch: Batch, mnist: DataBundle
) -> None:
    x, y = test_batch
    attack = ReversiblePatch(size=0.3, epochs=1, n_train=200, max_threshold=1, location="center")
    attack.fit(tiny_model, *as_tensors(mnist.train, 200))
    result = attack(tiny_model, x, y)
    plain, _, _ = attack.make(tiny_model, x)
    flags = torch.tensor(result.extras["reversible"])
    assert (~flags).sum() >= len(x) // 2
    assert torch.equal(quantise(result.x_adv)[~flags], plain[~flags])
    assert all("does not fit" in r for r, ok in zip(result.extras["not_fitting_reason"], flags, strict=True) if not ok)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"size": [0.05, 0.1]},
        {"size": 1.0},
        {"max_threshold": 0},
        {"max_threshold": 64},
        {"codec": "gzip"},
        {"location": "middle"},
        {"epochs": 0},
    ],
)
def test_bad_hyper_parameters_raise(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        ReversiblePatch(**kwargs)


def test_config_instantiates() -> None:
    with initialize_config_module(config_module="advsuite.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["attack=reversible_patch"])
    attack = instantiate(cfg.attack)
    assert isinstance(attack, ReversiblePatch) and attack.access == "whitebox"
    assert attack.size == 0.05 and attack.max_threshold == 63 and attack.codec == "auto"

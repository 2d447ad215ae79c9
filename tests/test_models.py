"""Architectures, checkpoints and the zoo (CPU, no network, tiny budgets)."""

from __future__ import annotations

import json
import shutil
import urllib.error
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from advsuite.artifacts import META_FILE
from advsuite.data import DataBundle
from advsuite.errors import CheckpointError, ConfigError, OfflineError
from advsuite.models import ARCHS, Classifier, build_classifier, load_model, load_weights, save_checkpoint
from advsuite.models.checkpoints import read_metadata, weights_hash
from advsuite.models.zoo import WEIGHTS_FILE, cache_key, parse_spec
from advsuite.training import Recipe

TINY = {"epochs": 2, "train_subset": 512, "test_subset": 200, "batch_size": 32}


def fake_bundle(shape: tuple[int, int, int], n: int = 8, classes: int = 10, name: str = "fake") -> DataBundle:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, *shape, generator=gen)
    y = torch.arange(n) % classes
    mean, std = (0.5,) * shape[0], (0.25,) * shape[0]
    ds = TensorDataset(x, y)
    return DataBundle(name, ds, ds, classes, shape, mean, std)


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_every_arch_builds_and_gives_logits(arch: str, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    model = build_classifier(arch, fake_bundle(shape))
    x = torch.rand(3, *shape)
    with torch.no_grad(), model.evaluating():
        logits = model(x)
    assert logits.shape == (3, 10)
    assert torch.isfinite(logits).all()
    assert model.info["adaptation"]["arch"] == arch
    assert model.training  # evaluating() restored train mode


def test_stem_choice_is_recorded() -> None:
    model = build_classifier("resnet50", fake_bundle((1, 28, 28)))
    assert model.info["adaptation"]["stem"] == "imagenet"
    assert model.net.conv1.in_channels == 1
    cifar = build_classifier("resnet18", fake_bundle((3, 32, 32)), stem="cifar")
    assert cifar.info["adaptation"]["stem"] == "cifar"
    assert isinstance(cifar.net.maxpool, torch.nn.Identity)
    assert build_classifier("vit_tiny", fake_bundle((1, 28, 28))).info["adaptation"]["patch_size"] == 4
    assert build_classifier("vgg16", fake_bundle((1, 28, 28))).info["adaptation"]["pools"] == 4


def test_unknown_arch_and_kwargs_fail_with_choices() -> None:
    with pytest.raises(ConfigError, match="smallcnn"):
        build_classifier("resnet1000", fake_bundle((1, 28, 28)))
    with pytest.raises(ConfigError, match="stem"):
        build_classifier("resnet18", fake_bundle((1, 28, 28)), stm="cifar")
    with pytest.raises(ConfigError, match="6n\\+4"):
        build_classifier("wide_resnet", fake_bundle((1, 28, 28)), depth=15)


# ---------------------------------------------------------------------------------------- checkpoints


@pytest.fixture
def cnn() -> Classifier:
    torch.manual_seed(1)
    return build_classifier("cifarcnn", fake_bundle((1, 28, 28)))


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_checkpoint_round_trip(cnn: Classifier, tmp_path: Path, suffix: str) -> None:
    x = torch.rand(4, 1, 28, 28)
    cnn.eval()
    path = save_checkpoint(cnn, tmp_path / f"w{suffix}", {"note": "hi"})
    torch.manual_seed(2)
    other = build_classifier("cifarcnn", fake_bundle((1, 28, 28))).eval()
    assert not torch.equal(other(x), cnn(x))
    load_weights(other, path)
    assert torch.equal(other(x), cnn(x))
    assert weights_hash(other) == weights_hash(cnn) == weights_hash(cnn.net)
    if suffix == ".safetensors":
        assert read_metadata(path) == {"note": "hi"}


def test_checkpoint_from_classifier_state_dict_with_prefix(cnn: Classifier, tmp_path: Path) -> None:
    path = tmp_path / "classifier.pth"
    torch.save({"state_dict": cnn.state_dict(), "epoch": 3}, path)  # keys "net.0.weight", ...
    assert all(k.startswith("net.") for k in cnn.state_dict())
    torch.manual_seed(5)
    other = build_classifier("cifarcnn", fake_bundle((1, 28, 28)))
    load_weights(other.net, path)  # into the bare network
    assert weights_hash(other) == weights_hash(cnn)


def test_missing_checkpoint_names_the_path(cnn: Classifier, tmp_path: Path) -> None:
    path = tmp_path / "nope.safetensors"
    with pytest.raises(CheckpointError, match="not found") as info:
        load_weights(cnn, path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_corrupt_checkpoint_says_corrupt(cnn: Classifier, tmp_path: Path, suffix: str) -> None:
    path = save_checkpoint(cnn, tmp_path / f"w{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated download
    with pytest.raises(CheckpointError, match="corrupt") as info:
        load_weights(cnn, path)
    assert str(path) in str(info.value)


def test_key_mismatch_lists_missing_and_unexpected(cnn: Classifier, tmp_path: Path) -> None:
    path = save_checkpoint(build_classifier("smallcnn", fake_bundle((1, 28, 28))), tmp_path / "small.safetensors")
    with pytest.raises(CheckpointError) as info:
        load_weights(cnn, path)
    message = str(info.value)
    assert "missing keys [" in message and "unexpected keys [" in message
    assert "1.running_mean" in message  # a BN buffer of cifarcnn that smallcnn lacks
    assert "more)" in message or message.count(",") < 30  # long lists are truncated


def test_shape_mismatch_is_reported(tmp_path: Path) -> None:
    path = save_checkpoint(build_classifier("resnet18", fake_bundle((1, 28, 28))), tmp_path / "r.safetensors")
    target = build_classifier("resnet18", fake_bundle((1, 28, 28)), stem="cifar")
    with pytest.raises(CheckpointError, match=r"conv1.weight: \(64, 1, 7, 7\) vs \(64, 1, 3, 3\)"):
        load_weights(target, path)


# ------------------------------------------------------------------------------------------------- zoo

SPEC = {"arch": "smallcnn", "checkpoint": None, "hub": False, "kwargs": {}, "recipe_overrides": TINY}


@pytest.fixture(scope="module")
def zoo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zoo")


@pytest.fixture(scope="module")
def trained(mnist: DataBundle, zoo_root: Path) -> Classifier:
    """The one model this module trains through the zoo (the other zoo tests reuse its cache entry)."""
    return load_model(SPEC, mnist, recipe={}, device="cpu", cache_dir=zoo_root, verbose=False)


def test_zoo_trains_and_records_metadata(trained: Classifier) -> None:
    assert trained.info["source"] == "trained"
    assert not trained.training
    weights = Path(str(trained.info["path"]))
    assert weights.name == WEIGHTS_FILE and weights.is_file()
    meta = json.loads((weights.parent / META_FILE).read_text())
    for key in ("arch", "dataset", "recipe", "seed", "clean_accuracy", "train_seconds", "versions", "created"):
        assert key in meta
    assert meta["adaptation"]["kwargs"] == {"channels": [16, 32], "hidden": 128}
    assert meta["recipe"]["epochs"] == TINY["epochs"]  # recipe_overrides were merged
    assert 0.5 < meta["clean_accuracy"] <= 1.0
    assert meta["versions"]["torch"] == str(torch.__version__)
    assert meta["weights_hash"] == weights_hash(trained)


def test_second_load_hits_the_cache(
    mnist: DataBundle, trained: Classifier, zoo_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("the second load must not train")

    monkeypatch.setattr("advsuite.models.zoo.train_classifier", no_training)
    # the same model spelled with explicit default kwargs resolves to the same cache entry
    spec = {**SPEC, "kwargs": {"hidden": 128}}
    second = load_model(spec, mnist, recipe={}, device="cpu", cache_dir=zoo_root, verbose=False)
    assert second.info["source"] == "cache"
    assert second.info["weights_hash"] == trained.info["weights_hash"] == weights_hash(second)
    assert second.info["clean_accuracy"] == trained.info["clean_accuracy"]
    x = torch.rand(5, 1, 28, 28)
    assert torch.equal(trained.predict(x), second.predict(x))


def test_cache_key_changes_with_seed_recipe_kwargs_and_data(mnist: DataBundle) -> None:
    spec = parse_spec(SPEC)
    adaptation = build_classifier("smallcnn", mnist).info["adaptation"]
    key = cache_key(spec, mnist, Recipe(), adaptation, 0)
    assert key == cache_key(spec, mnist, Recipe.coerce({"name": "other", "force": True}), adaptation, 0)
    assert key != cache_key(spec, mnist, Recipe(lr=0.02), adaptation, 0)
    assert key != cache_key(spec, mnist, Recipe(), adaptation, 1)
    wider = build_classifier("smallcnn", mnist, hidden=64).info["adaptation"]
    assert key != cache_key(spec, mnist, Recipe(), wider, 0)
    assert key != cache_key({**spec, "hub": True}, mnist, Recipe(), adaptation, 0)
    small = DataBundle("mnist5k", mnist.test, mnist.test, 10, (1, 28, 28), mnist.mean, mnist.std)
    assert key != cache_key(spec, small, Recipe(), adaptation, 0)


def test_corrupt_cache_retrains_with_a_warning(mnist: DataBundle, trained: Classifier, tmp_path: Path) -> None:
    entry = Path(str(trained.info["path"])).parent
    copy = tmp_path / entry.relative_to(entry.parents[1])
    shutil.copytree(entry, copy)
    (copy / WEIGHTS_FILE).write_bytes((copy / WEIGHTS_FILE).read_bytes()[:100])  # a truncated file
    with pytest.warns(UserWarning, match="corrupt"):
        again = load_model(SPEC, mnist, recipe={}, device="cpu", cache_dir=tmp_path, verbose=False)
    assert again.info["source"] == "trained"
    assert again.info["weights_hash"] == trained.info["weights_hash"]  # deterministic retraining
    assert load_model(SPEC, mnist, recipe={}, device="cpu", cache_dir=tmp_path, verbose=False).info["source"] == "cache"
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temporary files


def test_explicit_checkpoint_wins(mnist: DataBundle, trained: Classifier, tmp_path: Path) -> None:
    path = save_checkpoint(trained, tmp_path / "mine.safetensors")
    spec = {**SPEC, "checkpoint": str(path)}
    model = load_model(spec, mnist, recipe={}, device="cpu", cache_dir=tmp_path / "empty", verbose=False)
    assert model.info["source"] == "checkpoint" and model.info["path"] == str(path)
    assert model.info["weights_hash"] == trained.info["weights_hash"]
    assert model.info["clean_accuracy"] == pytest.approx(trained.info["clean_accuracy"], abs=0.1)
    with pytest.raises(CheckpointError, match=r"missing\.safetensors"):
        load_model({**SPEC, "checkpoint": str(tmp_path / "missing.safetensors")}, mnist, recipe={}, verbose=False)


def test_bad_spec_and_recipe_fail_at_once(mnist: DataBundle) -> None:
    with pytest.raises(ConfigError, match="valid keys"):
        load_model({**SPEC, "kwarg": {}}, mnist, recipe={}, verbose=False)
    with pytest.raises(ConfigError, match="epochz"):
        load_model(SPEC, mnist, recipe={"epochz": 3}, verbose=False)


def test_hub_offline_raises_offline_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub cache: a download is needed

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    data = fake_bundle((3, 128, 128), n=4, classes=5, name="fake128")
    spec = {**SPEC, "arch": "resnet18", "hub": True}
    with pytest.raises(OfflineError, match="offline"):
        load_model(spec, data, recipe={}, device="cpu", cache_dir=tmp_path, verbose=False)


def test_hub_refuses_small_or_grayscale_data(mnist: DataBundle) -> None:
    with pytest.raises(ConfigError, match="224"):
        load_model({**SPEC, "arch": "resnet50", "hub": True}, mnist, recipe={}, verbose=False)
    with pytest.raises(ConfigError, match="no hub weights"):
        load_model({**SPEC, "hub": True}, mnist, recipe={}, verbose=False)


def test_hub_weights_from_the_local_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real hub path, offline: weights already in $TORCH_HOME load, a new head is fine-tuned."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    cached = tmp_path / "torch" / "hub" / "checkpoints" / Path(url).name
    cached.parent.mkdir(parents=True)
    torch.manual_seed(7)
    imagenet_like = torchvision.models.resnet18(weights=None)  # stands in for the ImageNet weights
    torch.save(imagenet_like.state_dict(), cached)
    data = fake_bundle((3, 128, 128), n=4, classes=5, name="fake128")  # one training step
    spec = {**SPEC, "arch": "resnet18", "hub": True, "recipe_overrides": {"epochs": 1, "batch_size": 4, "lr": 1e-9}}
    model = load_model(spec, data, recipe={}, device="cpu", cache_dir=tmp_path / "zoo", verbose=False)
    assert model.info["source"] == "trained" and model.info["init"] == "hub"
    assert model.net.fc.out_features == 5
    # lr ~ 0: the backbone still holds the hub weights
    assert torch.allclose(model.net.conv1.weight, imagenet_like.conv1.weight, atol=1e-6)

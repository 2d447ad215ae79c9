"""Dataset loaders and their configs: real MNIST/CIFAR from the shared folder, generated npz and image folders."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image

import advsuite.conf
from advsuite.data import (
    DATA_ROOT_ENV,
    DataBundle,
    ImageArrayDataset,
    as_tensors,
    data_root,
    imagefolder_dataset,
    mnist5k,
    npz_dataset,
    torchvision_dataset,
    torchvision_sets,
)
from advsuite.data.bundle import class_mixed_order
from advsuite.data.torchvision_sets import SPECS
from advsuite.errors import ConfigError, DatasetNotFoundError, InputError, OfflineError
from advsuite.tasks.evaluate import warn_if_unmixed

# CI keeps the real data beside the checkout; the product reaches it only through root/ADVSUITE_DATA.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DATASET_CONF = Path(advsuite.conf.__file__).parent / "dataset"
# Configs whose files are not in the shared folder: instantiating them must fail with a precise message.
NEEDS_DOWNLOAD = {"fashion_mnist", "cifar10", "cifar100", "svhn"}


def require_shared() -> Path:
    if not (SHARED_DATA / "MNIST" / "raw").is_dir() or not (SHARED_DATA / "cifar10-jpeg").is_dir():
        pytest.fail(
            f"the real test data must be at {SHARED_DATA} (MNIST/raw and cifar10-jpeg); see shared/data/README.md"
        )
    return SHARED_DATA


def dataset_config(name: str, data: Path | str | None, **overrides: object) -> DictConfig:
    """conf/dataset/<name>.yaml with ``${paths.data}`` resolvable, as the root config provides it."""
    cfg = OmegaConf.create({"paths": {"data": None if data is None else str(data)}})
    cfg.dataset = OmegaConf.load(DATASET_CONF / f"{name}.yaml")
    for key, value in overrides.items():
        cfg.dataset[key] = value
    return cfg


@pytest.fixture(scope="module")
def shared_config() -> Callable[[str], DataBundle]:
    """Instantiate a config against the shared folder once per module (real files take a second or two)."""
    root = require_shared()
    built: dict[str, DataBundle] = {}

    def load(name: str) -> DataBundle:
        if name not in built:
            built[name] = instantiate(dataset_config(name, root).dataset)
        return built[name]

    return load


def check_split(bundle: DataBundle, n_train: int, n_test: int) -> tuple[torch.Tensor, torch.Tensor]:
    assert (len(bundle.train), len(bundle.test)) == (n_train, n_test)  # type: ignore[arg-type]
    x, y = as_tensors(bundle.test, 64)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert tuple(x.shape) == (64, *bundle.input_shape)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and float(x.max()) > 0.5
    image, label = bundle.test[0]
    assert image.dtype == torch.float32
    assert torch.equal(image, x[0]) and int(label) == int(y[0])  # item path and as_tensors' fast path agree
    return x, y


# --------------------------------------------------------------------------------------- root resolution


def test_data_root_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ADVSUITE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    assert data_root() == tmp_path / "home" / "data"
    monkeypatch.setenv(DATA_ROOT_ENV, "")  # empty counts as unset, not as the working directory
    assert data_root() == tmp_path / "home" / "data"
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "env"))
    assert data_root() == tmp_path / "env"
    assert data_root(tmp_path / "explicit") == tmp_path / "explicit"
    monkeypatch.delenv("ADVSUITE_HOME")
    monkeypatch.delenv(DATA_ROOT_ENV)
    assert data_root() == Path.home() / ".advsuite" / "data"


# --------------------------------------------------------------------------------------- mnist5k


def test_mnist5k_split(mnist: DataBundle) -> None:
    check_split(mnist, 4000, 1000)
    assert mnist.input_shape == (1, 28, 28) and mnist.num_classes == 10
    _, y_train = as_tensors(mnist.train)
    _, y_test = as_tensors(mnist.test)
    assert torch.bincount(y_train).tolist() == [400] * 10
    assert torch.bincount(y_test).tolist() == [100] * 10


# --------------------------------------------------------------------------------------- torchvision


def test_mnist_from_shared_folder_via_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_ROOT_ENV, str(require_shared()))
    bundle = torchvision_dataset("mnist")
    _, y = check_split(bundle, 60000, 10000)
    assert y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the official test order
    assert bundle.input_shape == (1, 28, 28) and bundle.mean == (0.1307,)
    assert isinstance(bundle.test, ImageArrayDataset) and bundle.test.x.dtype == torch.uint8
    assert bundle.info["root"] == str(SHARED_DATA)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_missing_files_name_what_to_do(name: str, tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        torchvision_dataset(name, root=str(tmp_path), download=False)
    message = str(info.value)
    for file in SPECS[name].files:
        assert file in message
    assert str(tmp_path) in message and "dataset.download=true" in message and DATA_ROOT_ENV in message
    assert isinstance(info.value, FileNotFoundError)


def test_missing_files_lists_only_the_missing(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte").write_bytes(b"")
    with pytest.raises(DatasetNotFoundError) as info:
        torchvision_dataset("mnist", root=str(tmp_path))
    missing = str(info.value).split("missing:")[1].split(". ")[0]
    assert "train-labels-idx1-ubyte" in missing and "train-images-idx3-ubyte" not in missing


def test_corrupt_files_and_failed_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for file in SPECS["mnist"].files:
        (raw / file).write_bytes(b"junk")
    with pytest.raises(DatasetNotFoundError, match="corrupt"):
        torchvision_dataset("mnist", root=str(tmp_path))

    def offline(root: Path, download: bool) -> None:
        raise URLError("Name or service not known")

    monkeypatch.setitem(torchvision_sets._LOADERS, "cifar10", offline)
    with pytest.raises(OfflineError, match="cifar-10-batches-py"):
        torchvision_dataset("cifar10", root=str(tmp_path), download=True)


def test_unknown_torchvision_name() -> None:
    with pytest.raises(ConfigError, match="cifar10"):
        torchvision_dataset("imagenet21k")


# --------------------------------------------------------------------------------------- npz


def test_cifar10_npz_config_is_class_mixed_and_deterministic(shared_config: Callable[[str], DataBundle]) -> None:
    bundle = shared_config("cifar10_npz")
    assert bundle.name == "cifar10_npz" and bundle.num_classes == 10 and bundle.class_names is not None
    assert bundle.class_names[0] == "airplane" and bundle.input_shape == (3, 32, 32)
    x, y = check_split(bundle, 50000, 10000)
    # The file is sorted by class; shuffle_seed=0 must make the first 1000 test images cover all classes.
    assert torch.bincount(as_tensors(bundle.test, 1000)[1], minlength=10).min() >= 70
    with np.load(SHARED_DATA / "cifar10-jpeg" / "test.npz") as raw:
        order = torch.randperm(10000, generator=torch.Generator().manual_seed(0))
        assert torch.equal(y, torch.from_numpy(raw["y"].astype(np.int64))[order[:64]])
        expected = torch.from_numpy(raw["x"][int(order[0])]).permute(2, 0, 1).float() / 255
    assert torch.equal(x[0], expected)
    assert all(abs(m - c) < 0.01 for m, c in zip(bundle.mean, (0.4914, 0.4822, 0.4465), strict=True))


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def small_arrays(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), np.arange(n) % 4


def test_npz_single_file_roundtrip(tmp_path: Path) -> None:
    x_train, y_train = small_arrays(20)
    x_test, y_test = small_arrays(12, seed=1)
    names = np.array(["a", "b", "c", "d"])
    write_npz(tmp_path / "d.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, class_names=names)
    bundle = npz_dataset(path="d.npz", root=str(tmp_path), shuffle_seed=None)
    x, y = as_tensors(bundle.test)
    assert torch.equal(x, torch.from_numpy(x_test).permute(0, 3, 1, 2).float() / 255)
    assert y.tolist() == y_test.tolist()
    assert bundle.num_classes == 4 and bundle.class_names == ["a", "b", "c", "d"] and bundle.input_shape == (3, 8, 8)
    mean = x_train.reshape(-1, 3).mean(0) / 255
    assert np.allclose(bundle.mean, mean, atol=1e-4)
    x[0] += 1  # callers may modify what as_tensors returns without touching the stored split
    assert float(as_tensors(bundle.test, 1)[0].max()) <= 1.0


def test_npz_layouts_and_float_input(tmp_path: Path) -> None:
    gray = np.random.default_rng(0).random((10, 6, 6)).astype(np.float32)
    write_npz(tmp_path / "tr.npz", x=gray, y=np.zeros(10, dtype=np.int64))
    write_npz(tmp_path / "te.npz", x=gray[:4], y=np.ones((4, 1), dtype=np.uint8))  # Keras-style (N, 1) labels
    bundle = npz_dataset(train=str(tmp_path / "tr.npz"), test=str(tmp_path / "te.npz"), shuffle_seed=None)
    assert bundle.input_shape == (1, 6, 6) and bundle.num_classes == 2
    assert torch.equal(as_tensors(bundle.test)[0][:, 0], torch.from_numpy(gray[:4]))
    nchw = np.zeros((5, 3, 8, 8), dtype=np.uint8)
    write_npz(tmp_path / "c.npz", x=nchw, y=np.arange(5))
    assert npz_dataset(train="c.npz", test="c.npz", root=str(tmp_path)).input_shape == (3, 8, 8)


def test_npz_image_size_resizes_every_split(tmp_path: Path) -> None:
    x_train, y_train = small_arrays(6)
    write_npz(tmp_path / "d.npz", x_train=x_train, y_train=y_train, x_test=x_train[:2], y_test=y_train[:2])
    bundle = npz_dataset(path="d.npz", root=str(tmp_path), shuffle_seed=None, image_size=16)
    x, _ = as_tensors(bundle.test)
    assert bundle.input_shape == (3, 16, 16) and x.shape == (2, 3, 16, 16)
    # the mean colour survives the resize
    assert abs(float(x[0].mean()) - float(x_train[0].mean()) / 255) < 0.01
    with pytest.raises(ConfigError, match="image_size"):
        npz_dataset(path="d.npz", root=str(tmp_path), image_size=0)


def test_npz_shuffle_is_seeded_per_split(tmp_path: Path) -> None:
    x, _ = small_arrays(30)
    write_npz(tmp_path / "tr.npz", x=x, y=np.arange(30))
    write_npz(tmp_path / "tr_short.npz", x=x[:10], y=np.arange(10))
    write_npz(tmp_path / "te.npz", x=x[:20], y=np.arange(20))

    def order(seed: int | None, train: str = "tr.npz") -> list[int]:
        bundle = npz_dataset(train=train, test="te.npz", root=str(tmp_path), shuffle_seed=seed)
        return as_tensors(bundle.test)[1].tolist()

    assert order(None) == list(range(20))
    assert order(0) == order(0) == torch.randperm(20, generator=torch.Generator().manual_seed(0)).tolist()
    assert order(0) != order(1)
    assert order(0, train="tr_short.npz") == order(0)  # the test order does not depend on the train file


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (np.full((4, 8, 8, 3), 1.5, dtype=np.float32), np.arange(4), r"\[0, 1\]"),
        (np.full((4, 8, 8, 3), np.nan, dtype=np.float32), np.arange(4), "NaN"),
        (np.zeros((4, 8, 8, 3), dtype=np.uint8), np.arange(3), "expected 4 labels"),
        (np.zeros((4, 8, 8, 3), dtype=np.int32), np.arange(4), "uint8"),
        (np.zeros((4, 8, 8, 3), dtype=np.uint8), np.arange(4).astype(np.float32), "integer"),
        (np.zeros((4, 8, 8, 3), dtype=np.uint8), -np.arange(4), ">= 0"),
        (np.zeros((4, 3, 8, 3), dtype=np.uint8), np.arange(4), "layout"),
        (np.zeros((4, 8), dtype=np.uint8), np.arange(4), "shape"),
    ],
)
def test_bad_npz_raises_input_error(tmp_path: Path, x: np.ndarray, y: np.ndarray, match: str) -> None:
    write_npz(tmp_path / "bad.npz", x=x, y=y)
    with pytest.raises(InputError, match=match):
        npz_dataset(train="bad.npz", test="bad.npz", root=str(tmp_path))


def test_npz_file_problems(tmp_path: Path) -> None:
    x, y = small_arrays(4)
    write_npz(tmp_path / "ok.npz", x=x, y=y)
    write_npz(tmp_path / "small.npz", x=x[:, :4, :4], y=y)
    write_npz(tmp_path / "nolabels.npz", x=x)
    np.savez(tmp_path / "pickled.npz", x=np.array([{"a": 1}], dtype=object), y=y)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path)):
        npz_dataset(train="absent.npz", test="ok.npz", root=str(tmp_path))
    with pytest.raises(InputError, match=r"lacks the arrays \['y'\]"):
        npz_dataset(train="nolabels.npz", test="ok.npz", root=str(tmp_path))
    for name in ("pickled.npz", "junk.npz"):
        with pytest.raises(InputError, match="cannot read"):
            npz_dataset(train=name, test="ok.npz", root=str(tmp_path))
    with pytest.raises(InputError, match="test images"):
        npz_dataset(train="ok.npz", test="small.npz", root=str(tmp_path))
    with pytest.raises(InputError, match="num_classes=2"):
        npz_dataset(train="ok.npz", test="ok.npz", root=str(tmp_path), num_classes=2)
    with pytest.raises(ConfigError, match=r"dataset\.train"):
        npz_dataset(root=str(tmp_path))
    with pytest.raises(ConfigError, match="not both"):
        npz_dataset(path="ok.npz", train="ok.npz", root=str(tmp_path))


# --------------------------------------------------------------------------------------- image folders


def make_folder(root: Path, split: str, colours: dict[str, tuple[int, int, int]], sizes: list[tuple[int, int]]) -> None:
    for cls, colour in colours.items():
        (root / split / cls).mkdir(parents=True)
        for i, size in enumerate(sizes):
            Image.new("RGB", size, colour).save(root / split / cls / f"{i}.png")


def test_imagefolder_resizes_crops_and_keeps_train_labels(tmp_path: Path) -> None:
    make_folder(tmp_path, "train", {"cat": (255, 0, 0), "dog": (0, 0, 255)}, [(40, 30), (30, 50), (64, 64)])
    make_folder(tmp_path, "val", {"dog": (0, 0, 255)}, [(33, 21), (20, 20)])  # a split may lack classes
    Image.new("L", (25, 25), 128).save(tmp_path / "val" / "dog" / "gray.png")  # converted to RGB
    bundle = imagefolder_dataset(root=str(tmp_path), image_size=16, resize=20, shuffle_seed=None)
    assert bundle.class_names == ["cat", "dog"] and bundle.num_classes == 2 and bundle.input_shape == (3, 16, 16)
    assert (len(bundle.train), len(bundle.test)) == (6, 3)  # type: ignore[arg-type]
    x, y = as_tensors(bundle.train)
    assert x.shape == (6, 3, 16, 16) and x.dtype == torch.float32
    assert y.tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.allclose(x[0], torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1).expand(3, 16, 16))
    x_test, y_test = as_tensors(bundle.test)
    assert y_test.tolist() == [1, 1, 1]  # "dog" keeps the train index although "cat" is absent
    assert torch.allclose(x_test[2], torch.full((3, 16, 16), 128 / 255))
    # Lazy: images are decoded on access, so a changed file shows up without reloading.
    Image.new("RGB", (20, 20), (0, 255, 0)).save(tmp_path / "val" / "dog" / "0.png")
    assert float(bundle.test[0][0][1].mean()) == 1.0


def test_imagefolder_order_and_errors(tmp_path: Path) -> None:
    make_folder(tmp_path, "train", {"a": (0, 0, 0), "b": (9, 9, 9)}, [(8, 8)] * 6)
    make_folder(tmp_path, "val", {"a": (0, 0, 0), "b": (9, 9, 9)}, [(8, 8)] * 6)
    kwargs = {"root": str(tmp_path), "image_size": 8, "resize": 8}
    labels = as_tensors(imagefolder_dataset(**kwargs, shuffle_seed=0).test)[1]  # type: ignore[arg-type]
    assert sorted(labels.tolist()) == [0] * 6 + [1] * 6
    test_split = imagefolder_dataset(**kwargs).test  # type: ignore[arg-type]
    assert pickle.loads(pickle.dumps(test_split))[0][1] == test_split[0][1]  # DataLoader workers can receive it
    assert labels.tolist() != [0] * 6 + [1] * 6  # the fixed permutation mixes classes
    val_only = imagefolder_dataset(**kwargs, train=None)  # type: ignore[arg-type]
    assert len(val_only.train) == 0 and val_only.class_names == ["a", "b"]  # type: ignore[arg-type]
    with pytest.raises(DatasetNotFoundError, match="nowhere"):
        imagefolder_dataset(**kwargs, test="nowhere")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="resize"):
        imagefolder_dataset(root=str(tmp_path), image_size=16, resize=8)
    (tmp_path / "val" / "zebra").mkdir()
    with pytest.raises(InputError, match="zebra"):
        imagefolder_dataset(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", sorted(p.stem for p in DATASET_CONF.glob("*.yaml")))
def test_dataset_config_instantiates(name: str, tmp_path: Path, shared_config: Callable[[str], DataBundle]) -> None:
    raw = OmegaConf.load(DATASET_CONF / f"{name}.yaml")
    assert isinstance(raw, DictConfig)
    assert raw.get("_target_") and raw.get("name") == name, "each config names its target and itself"
    if name in NEEDS_DOWNLOAD:
        # Every kwarg is accepted (else a TypeError); what fails is the offline check, naming the fix.
        with pytest.raises(InstantiationException) as info:
            instantiate(dataset_config(name, tmp_path).dataset)
        assert isinstance(info.value.__cause__, DatasetNotFoundError)
        assert "dataset.download=true" in str(info.value) and str(tmp_path) in str(info.value)
        return
    if name == "npz":
        images, labels = small_arrays(8)
        write_npz(tmp_path / "train.npz", x=images, y=labels)
        write_npz(tmp_path / "test.npz", x=images, y=labels)
        bundle = instantiate(dataset_config(name, tmp_path, train="train.npz", test="test.npz").dataset)
    elif name == "imagefolder":
        make_folder(tmp_path, "imagenet/train", {"a": (1, 2, 3)}, [(300, 260)])
        make_folder(tmp_path, "imagenet/val", {"a": (1, 2, 3)}, [(260, 300)])
        bundle = instantiate(dataset_config(name, tmp_path).dataset)
    else:
        bundle = shared_config(name)  # mnist5k, mnist, cifar10_npz: real data, loaded once per module
    assert isinstance(bundle, DataBundle) and bundle.name == name
    x, _ = as_tensors(bundle.test, 1)
    assert tuple(x.shape[1:]) == bundle.input_shape and len(bundle.mean) == bundle.input_shape[0]


# -- evaluation order: the first n test images mix classes -------------------------------------------


def covered_in_first(bundle: DataBundle, n: int = 100) -> set[int]:
    return set(as_tensors(bundle.test, n)[1].tolist())


def test_the_embedded_test_split_takes_classes_in_turns(mnist: DataBundle) -> None:
    # stored class by class, it used to give 100 zeros; now every run of 10 holds each digit once
    labels = as_tensors(mnist.test)[1]
    assert sorted(labels[:100].tolist()) == sorted(list(range(10)) * 10)
    assert all(sorted(labels[i : i + 10].tolist()) == list(range(10)) for i in range(0, 1000, 10))
    assert torch.equal(labels, as_tensors(mnist5k().test)[1])  # fixed: the same order every time


def test_first_100_test_images_of_every_loader_cover_every_class(tmp_path: Path) -> None:
    """Every loader, fed data stored class by class, evaluates a class-mixed sample by default."""
    x = np.repeat(np.arange(10, dtype=np.uint8), 30)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    y = np.repeat(np.arange(10), 30)  # 300 images, sorted by class
    write_npz(tmp_path / "sorted.npz", x=x, y=y)
    bundles = {
        "mnist5k": mnist5k(),
        "npz": npz_dataset(train="sorted.npz", test="sorted.npz", root=str(tmp_path)),
        "mnist": torchvision_dataset("mnist", root=str(require_shared())),
    }
    make_folder(tmp_path, "val", {str(c): (c, c, c) for c in range(10)}, [(4, 4)] * 12)
    bundles["imagefolder"] = imagefolder_dataset(root=str(tmp_path), train=None, image_size=4, resize=4)
    for name, bundle in bundles.items():
        assert covered_in_first(bundle) == set(range(10)), name
    # a user who keeps file order (shuffle_seed=None) gets it, and the evaluation says so
    in_file_order = npz_dataset(train="sorted.npz", test="sorted.npz", root=str(tmp_path), shuffle_seed=None)
    labels = as_tensors(in_file_order.test, 100)[1]
    assert covered_in_first(in_file_order) == {0, 1, 2, 3}
    with pytest.warns(RuntimeWarning, match="cover only 4 of 10 classes"):
        warn_if_unmixed(labels, 10, "sorted")


def test_class_mixed_order_is_a_seeded_permutation() -> None:
    y = torch.tensor([2] * 7 + [0] * 3 + [1] * 5)
    order = class_mixed_order(y, seed=5)
    assert sorted(order.tolist()) == list(range(15))
    assert torch.equal(order, class_mixed_order(y, seed=5)) and not torch.equal(order, class_mixed_order(y, seed=6))
    assert sorted(y[order][:9].tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # three rounds of every class

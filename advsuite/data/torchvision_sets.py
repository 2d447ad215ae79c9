"""Standard small datasets through ``torchvision.datasets``, held in memory as uint8 tensors."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from advsuite.data.bundle import DATA_ROOT_ENV, DataBundle
from advsuite.data.npz import ImageArrayDataset
from advsuite.data.root import ROOT_HINT, data_root
from advsuite.errors import ConfigError, DatasetNotFoundError, OfflineError

#: (train images uint8 NCHW, train labels, test images, test labels, class names or None)
Splits = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str] | None]


@dataclass(frozen=True)
class TorchvisionSpec:
    """What one torchvision dataset needs on disk and what a model needs to know about it."""

    folder: str  #: where torchvision looks, relative to the data root ("" = the root itself)
    files: tuple[str, ...]  #: files torchvision reads inside ``folder``
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] | None  #: None: read from the dataset's own metadata


_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_DIGITS = tuple(str(i) for i in range(10))

SPECS: dict[str, TorchvisionSpec] = {
    "mnist": TorchvisionSpec("MNIST/raw", _MNIST_FILES, 10, (1, 28, 28), (0.1307,), (0.3081,), _DIGITS),
    "fashion_mnist": TorchvisionSpec(
        "FashionMNIST/raw",
        _MNIST_FILES,
        10,
        (1, 28, 28),
        (0.2860,),
        (0.3530,),
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ),
    "cifar10": TorchvisionSpec(
        "cifar-10-batches-py",
        ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch", "batches.meta"),
        10,
        (3, 32, 32),
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    ),
    "cifar100": TorchvisionSpec(
        "cifar-100-python",
        ("train", "test", "meta"),
        100,
        (3, 32, 32),
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
        None,
    ),
    # torchvision already maps SVHN's label 10 to digit 0.
    "svhn": TorchvisionSpec(
        "",
        ("train_32x32.mat", "test_32x32.mat"),
        10,
        (3, 32, 32),
        (0.4377, 0.4438, 0.4728),
        (0.1980, 0.2010, 0.1970),
        _DIGITS,
    ),
}
TORCHVISION_DATASETS = tuple(SPECS)


def _mnist_like(cls_name: str) -> Callable[[Path, bool], Splits]:
    def load(root: Path, download: bool) -> Splits:
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        train, test = cls(root, train=True, download=download), cls(root, train=False, download=download)
        return train.data.unsqueeze(1), train.targets, test.data.unsqueeze(1), test.targets, None

    return load


def _cifar(cls_name: str) -> Callable[[Path, bool], Splits]:
    def load(root: Path, download: bool) -> Splits:
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        train, test = cls(root, train=True, download=download), cls(root, train=False, download=download)

        def nchw(data: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(data).permute(0, 3, 1, 2).contiguous()

        labels = torch.as_tensor
        return nchw(train.data), labels(train.targets), nchw(test.data), labels(test.targets), list(train.classes)

    return load


def _svhn(root: Path, download: bool) -> Splits:
    from torchvision.datasets import SVHN

    train, test = SVHN(root, split="train", download=download), SVHN(root, split="test", download=download)
    as_t = torch.from_numpy
    return as_t(train.data), as_t(train.labels), as_t(test.data), as_t(test.labels), None


_LOADERS: dict[str, Callable[[Path, bool], Splits]] = {
    "mnist": _mnist_like("MNIST"),
    "fashion_mnist": _mnist_like("FashionMNIST"),
    "cifar10": _cifar("CIFAR10"),
    "cifar100": _cifar("CIFAR100"),
    "svhn": _svhn,
}


def expected_files(name: str, root: str | os.PathLike[str] | None = None) -> list[Path]:
    """The files ``torchvision_dataset(name, root)`` reads."""
    spec = _spec(name)
    return [data_root(root) / spec.folder / f for f in spec.files]


def _spec(name: str) -> TorchvisionSpec:
    if name not in SPECS:
        raise ConfigError(f"unknown torchvision dataset {name!r}; choose one of {', '.join(TORCHVISION_DATASETS)}")
    return SPECS[name]


def _not_found(name: str, base: Path, missing: list[Path]) -> DatasetNotFoundError:
    spec = SPECS[name]
    where = base / spec.folder
    listed = ", ".join(str(p.relative_to(base)) for p in missing)
    return DatasetNotFoundError(
        f"dataset {name!r} not found under the data root {base} (looked in {where}); missing: {listed}. "
        f"Download it with dataset.download=true (needs network), or {ROOT_HINT} "
        f"(a folder holding {spec.folder or 'the files'}/). Resolution order: dataset.root, ${DATA_ROOT_ENV}, "
        "$ADVSUITE_HOME/data (default ~/.advsuite/data)."
    )


def torchvision_dataset(name: str, root: str | None = None, download: bool = False) -> DataBundle:
    """``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100`` or ``svhn`` in the official split and order.

    Files are read from ``data_root(root)`` in torchvision's layout (e.g. ``<root>/MNIST/raw/``,
    ``<root>/cifar-10-batches-py/``). Nothing is downloaded unless ``download`` is true; missing files
    raise :class:`DatasetNotFoundError` naming them. Both splits are held as uint8 tensors (a few
    hundred MB at most) and yield float32 CHW images in [0, 1].
    """
    spec = _spec(name)
    base = data_root(root)
    missing = [p for p in expected_files(name, base) if not p.is_file()]
    if missing and not download:
        raise _not_found(name, base, missing)
    try:
        x_train, y_train, x_test, y_test, names = _LOADERS[name](base, download)
    except Exception as exc:
        # A failed download raises URLError/RuntimeError; unreadable files raise whatever torchvision's
        # parsers hit (RuntimeError, AssertionError, pickle errors). Either way the files are unusable.
        if missing:
            raise OfflineError(
                f"could not download {name!r} into {base}: {exc}. Without network, place the files "
                f"({', '.join(spec.files)}) under {base / spec.folder} and set dataset.download=false"
            ) from exc
        raise DatasetNotFoundError(
            f"torchvision could not read {name!r} from {base / spec.folder}: {exc}. The files may be corrupt; "
            "delete them and re-run with dataset.download=true"
        ) from exc
    return DataBundle(
        name=name,
        train=ImageArrayDataset(x_train, y_train),
        test=ImageArrayDataset(x_test, y_test),
        num_classes=spec.num_classes,
        input_shape=spec.input_shape,
        mean=spec.mean,
        std=spec.std,
        class_names=list(spec.class_names) if spec.class_names is not None else names,
        info={"source": f"torchvision.datasets ({name})", "root": str(base)},
    )

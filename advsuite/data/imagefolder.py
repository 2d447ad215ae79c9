"""ImageNet-style folders (one subfolder per class), decoded lazily with resize + center crop."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset, Subset

from advsuite.data.bundle import DataBundle
from advsuite.data.root import ROOT_HINT, data_root, resolve_under
from advsuite.errors import ConfigError, DatasetNotFoundError, InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageFiles(Dataset[tuple[torch.Tensor, int]]):
    """``(path, label)`` pairs decoded on access. A module-level class, so DataLoader workers can
    pickle it under every start method."""

    def __init__(self, samples: list[tuple[str, int]], transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        with Image.open(path) as image:
            return self.transform(image.convert("RGB")), label


def _samples(directory: Path, classes: list[str]) -> list[tuple[str, int]]:
    # Labels come from the given class list (the train split's), so every split agrees on indices
    # even when one lacks some classes.
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset  # lazy: torchvision is slow to import

    mapping = {c: i for i, c in enumerate(classes)}
    return make_dataset(str(directory), mapping, extensions=IMG_EXTENSIONS, allow_empty=True)


def _class_dirs(directory: Path, split: str) -> list[str]:
    if not directory.is_dir():
        raise DatasetNotFoundError(
            f"image folder for the {split} split not found: {directory}. Relative paths are read under the "
            f"data root; {ROOT_HINT}, and set dataset.{split}=<folder with one subfolder per class>"
        )
    classes = sorted(entry.name for entry in directory.iterdir() if entry.is_dir())
    if not classes:
        raise InputError(f"{directory} has no class subfolders; expected {directory}/<class>/<image>.png")
    return classes


def _ordered(dataset: ImageFiles | Subset, seed: int | None) -> Dataset:
    # Folders list images class by class; a fixed permutation makes "the first n" class-mixed.
    if seed is None:
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(int(seed)))
    return Subset(dataset, order.tolist())


def imagefolder_dataset(
    root: str | None = None,
    train: str | None = "train",
    test: str = "val",
    image_size: int = 224,
    resize: int | None = 256,
    name: str = "imagefolder",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    shuffle_seed: int | None = 0,
) -> DataBundle:
    """Images under ``train``/``test`` folders (``<split>/<class>/<image>``), relative to the data root.

    Each image is decoded on access, converted to RGB, resized so its shorter side is ``resize``
    (``None``: ``image_size``) and center-cropped to ``image_size``, giving float32 3×S×S in [0, 1].
    Class indices follow the sorted subfolder names of the train split (of the test split when
    ``train`` is None, e.g. evaluating ImageNet models on ``val`` only; the train split is then empty).
    ``shuffle_seed`` (default 0) fixes a permutation of each split so the first n test images mix
    classes; ``None`` keeps folder order.
    """
    if image_size <= 0:
        raise ConfigError(f"image_size must be positive, got {image_size}")
    resize = image_size if resize is None else resize
    if resize < image_size:
        raise ConfigError(f"resize ({resize}) must be >= image_size ({image_size}): the crop is taken from the resize")
    from torchvision import transforms

    transform = transforms.Compose(
        [transforms.Resize(resize, antialias=True), transforms.CenterCrop(image_size), transforms.ToTensor()]
    )
    test_dir = resolve_under(test, root)
    train_dir = resolve_under(train, root) if train is not None else None
    classes = _class_dirs(train_dir if train_dir is not None else test_dir, "train" if train_dir else "test")
    unknown = sorted(set(_class_dirs(test_dir, "test")) - set(classes))
    if unknown:
        raise InputError(f"{test_dir} has class folders absent from the train split {train_dir}: {unknown[:10]}")

    test_set = ImageFiles(_samples(test_dir, classes), transform)
    train_set = ImageFiles(_samples(train_dir, classes), transform) if train_dir is not None else Subset(test_set, [])
    for split, ds, folder in (("test", test_set, test_dir), ("train", train_set, train_dir)):
        if folder is not None and len(ds) == 0:
            raise InputError(f"no images found in the {split} folder {folder} (extensions: .jpg, .png, ...)")
    if len(mean) != 3 or len(std) != 3:
        raise ConfigError(f"mean and std need 3 values (RGB), got {list(mean)}, {list(std)}")
    return DataBundle(
        name=name,
        train=_ordered(train_set, shuffle_seed),
        test=_ordered(test_set, shuffle_seed),
        num_classes=len(classes),
        input_shape=(3, image_size, image_size),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        class_names=classes,
        info={
            "source": "imagefolder",
            "train_dir": str(train_dir) if train_dir is not None else None,
            "test_dir": str(test_dir),
            "data_root": str(data_root(root)),
            "resize": resize,
            "shuffle_seed": shuffle_seed,
        },
    )

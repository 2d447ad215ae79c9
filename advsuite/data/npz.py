"""Users' own data as ``.npz`` arrays, and the in-memory dataset every array-backed loader shares."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from advsuite.data.bundle import DataBundle
from advsuite.data.root import ROOT_HINT, data_root, resolve_under
from advsuite.errors import ConfigError, DatasetNotFoundError, InputError

LAYOUTS = ("auto", "nhwc", "nchw")


class ImageArrayDataset(Dataset[tuple[torch.Tensor, int]]):
    """Images held in memory as uint8 NCHW (scaled to float32 [0, 1] on read) or float32 NCHW in [0, 1].

    uint8 storage keeps CIFAR-sized splits at a quarter of their float32 size; the division by 255
    happens per item (``__getitem__``) or per slice (``slice_tensors``, the fast path of ``as_tensors``).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if x.dtype not in (torch.uint8, torch.float32) or x.dim() != 4:
            raise InputError(f"images must be a uint8 or float32 (N, C, H, W) tensor, got {x.dtype} {tuple(x.shape)}")
        if y.shape != (len(x),):
            raise InputError(f"labels must have shape ({len(x)},), got {tuple(y.shape)}")
        self.x = x
        self.y = y.long()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return _unit(self.x[index]), int(self.y[index])

    def slice_tensors(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples ``start:stop`` as (float32 NCHW in [0, 1], int64) tensors that the caller may modify."""
        return _unit(self.x[start:stop]), self.y[start:stop].clone()


def resize_images(x: torch.Tensor, size: int | None, chunk: int = 2048) -> torch.Tensor:
    """``x`` (N, C, H, W) resized to ``size`` x ``size`` (bilinear, antialiased), same dtype; None: unchanged."""
    if size is None or tuple(x.shape[-2:]) == (size, size):
        return x
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ConfigError(f"dataset.image_size must be a positive whole number of pixels, got {size!r}")
    out = torch.empty((len(x), x.shape[1], size, size), dtype=x.dtype)
    for i in range(0, len(x), chunk):
        part = _unit(x[i : i + chunk])
        part = F.interpolate(part, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        part = part.clamp_(0, 1)
        out[i : i + chunk] = part.mul_(255).round_().to(torch.uint8) if x.dtype == torch.uint8 else part
    return out


def _unit(x: torch.Tensor) -> torch.Tensor:
    # Always a fresh tensor: attacks update inputs in place and must not corrupt the stored split.
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x.to(torch.float32, copy=True)


def images_to_nchw(x: np.ndarray, layout: str = "auto", what: str = "x") -> torch.Tensor:
    """Validate an image array and return it as a uint8 or float32 NCHW tensor.

    Accepts uint8 (0..255) or floating point values in [0, 1], shaped (N, H, W), (N, H, W, C) or
    (N, C, H, W). ``layout="auto"`` picks the axis of size 1 or 3 as channels and fails when both
    candidate axes qualify.
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if x.dtype == np.uint8:
        pass
    elif np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            raise InputError(f"{what}: images contain NaN or inf values; images must be finite")
        lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
        if not (lo >= 0.0 and hi <= 1.0):
            raise InputError(
                f"{what}: float images must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]; "
                "store 0..255 pixels as uint8 instead"
            )
    else:
        raise InputError(f"{what}: images must be uint8 (0..255) or float in [0, 1], got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]  # (N, H, W) grayscale
    elif x.ndim != 4:
        raise InputError(f"{what}: images must have shape (N, H, W), (N, H, W, C) or (N, C, H, W), got {x.shape}")
    elif layout == "auto":
        last, first = x.shape[3] in (1, 3), x.shape[1] in (1, 3)
        if last == first:
            raise InputError(f"{what}: cannot tell the channel axis of shape {x.shape}; set layout=nhwc or layout=nchw")
        layout = "nhwc" if last else "nchw"
    if layout == "nhwc" and x.ndim == 4:
        x = x.transpose(0, 3, 1, 2)
    x = np.ascontiguousarray(x, dtype=np.uint8 if x.dtype == np.uint8 else np.float32)
    return torch.from_numpy(x)


def labels_to_tensor(y: np.ndarray, n: int, what: str = "y") -> torch.Tensor:
    """Validate ``n`` non-negative integer class indices ((N,) or (N, 1)) and return them as int64."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]  # Keras-style (N, 1) labels
    if not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"{what}: labels must be integer class indices, got dtype {y.dtype}")
    if y.shape != (n,):
        raise InputError(f"{what}: expected {n} labels (one per image), got shape {y.shape}")
    if n and int(y.min()) < 0:
        raise InputError(f"{what}: labels must be >= 0, got {int(y.min())}")
    return torch.from_numpy(y.astype(np.int64))


def permute(x: torch.Tensor, y: torch.Tensor, seed: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed permutation of one split (identity when ``seed`` is None).

    Each split uses its own generator seeded with ``seed``, so a split's order depends only on its
    length and the seed.
    """
    if seed is None:
        return x, y
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(int(seed)))
    return x[order], y[order]


def channel_stats(x: torch.Tensor, chunk: int = 1024) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the images scaled to [0, 1], rounded to 4 decimals."""
    if x.dtype == torch.uint8:
        # A 256-bin histogram per channel gives exact moments ~10x faster than converting to float64.
        levels = torch.arange(256, dtype=torch.float64) / 255.0
        hist = torch.stack([torch.bincount(x[:, c].reshape(-1), minlength=256) for c in range(x.shape[1])]).double()
        count = hist.sum(dim=1).clamp_min(1)
        mean = (hist * levels).sum(dim=1) / count
        second = (hist * levels.square()).sum(dim=1) / count
    else:
        total = torch.zeros(x.shape[1], dtype=torch.float64)
        squares = torch.zeros_like(total)
        for part in x.split(chunk):  # chunked so a large split never exists as float64 at once
            values = part.double()
            total += values.sum(dim=(0, 2, 3))
            squares += values.square().sum(dim=(0, 2, 3))
        count = torch.tensor(float(max(1, x.shape[0] * x.shape[2] * x.shape[3])), dtype=torch.float64)
        mean, second = total / count, squares / count
    std = (second - mean.square()).clamp_min(0).sqrt()
    return tuple(round(float(m), 4) for m in mean), tuple(round(max(float(s), 1e-3), 4) for s in std)


def _load(file: Path, keys: tuple[str, ...], given: str | os.PathLike[str], root: Path) -> dict[str, np.ndarray]:
    if not file.is_file():
        raise DatasetNotFoundError(
            f"npz file not found: {file} (from {str(given)!r}; relative paths are read under the data root {root}). "
            f"Check the path, or {ROOT_HINT}"
        )
    try:
        # allow_pickle=False: an .npz from elsewhere must not be able to run code on load.
        with np.load(file, allow_pickle=False) as data:
            present = list(data.files)
            arrays = {k: data[k] for k in (*keys, "class_names") if k in present}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise InputError(f"cannot read {file} as a NumPy .npz archive of plain arrays: {exc}") from exc
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise InputError(f"{file} lacks the arrays {missing}; it holds {present}")
    return arrays


def npz_dataset(
    path: str | None = None,
    train: str | None = None,
    test: str | None = None,
    root: str | None = None,
    name: str = "npz",
    num_classes: int | None = None,
    layout: str = "auto",
    shuffle_seed: int | None = 0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
    image_size: int | None = None,
) -> DataBundle:
    """Images and labels from ``.npz`` files.

    Either ``path``: one file with ``x_train, y_train, x_test, y_test``; or ``train`` and ``test``: two
    files with ``x`` and ``y`` each. Relative paths are read under the data root (see
    :func:`advsuite.data.root.data_root`). ``x`` is uint8 (0..255) or float in [0, 1], NHWC, NCHW or
    NHW (``layout``); ``y`` holds integer class indices. An optional ``class_names`` array is used when
    the argument is not given. ``num_classes`` defaults to the largest label + 1; ``mean``/``std``
    default to the train split's per-channel statistics. ``image_size`` resizes every image to that square
    side (bilinear with antialiasing, then back to the stored dtype), e.g. CIFAR-10 at 64 px.

    ``shuffle_seed`` (default 0) applies a fixed permutation to each split, because evaluation takes
    the *first* n test images and many exported datasets are sorted by class. ``None`` keeps file order.
    """
    base = data_root(root)
    if path is not None and (train is not None or test is not None):
        raise ConfigError("npz dataset: give either path (one file) or train and test (two files), not both")
    if path is not None:
        arrays = _load(resolve_under(path, root), ("x_train", "y_train", "x_test", "y_test"), path, base)
        raw = {"train": (arrays["x_train"], arrays["y_train"]), "test": (arrays["x_test"], arrays["y_test"])}
        files = {"file": str(resolve_under(path, root))}
        stored_names = arrays.get("class_names")
    elif train is not None and test is not None:
        train_arrays = _load(resolve_under(train, root), ("x", "y"), train, base)
        test_arrays = _load(resolve_under(test, root), ("x", "y"), test, base)
        raw = {"train": (train_arrays["x"], train_arrays["y"]), "test": (test_arrays["x"], test_arrays["y"])}
        files = {"train_file": str(resolve_under(train, root)), "test_file": str(resolve_under(test, root))}
        stored_names = train_arrays.get("class_names")
    else:
        raise ConfigError(
            "npz dataset needs files: set dataset.train=<train.npz> and dataset.test=<test.npz> (keys x, y), "
            "or dataset.path=<file.npz> (keys x_train, y_train, x_test, y_test)"
        )

    splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for split, (x_raw, y_raw) in raw.items():
        x = resize_images(images_to_nchw(x_raw, layout, what=f"{name} {split} x"), image_size)
        y = labels_to_tensor(y_raw, len(x), what=f"{name} {split} y")
        splits[split] = permute(x, y, shuffle_seed)
    (x_train, y_train), (x_test, y_test) = splits["train"], splits["test"]
    if x_train.shape[1:] != x_test.shape[1:]:
        raise InputError(
            f"{name}: train images are {tuple(x_train.shape[1:])} but test images {tuple(x_test.shape[1:])} (C, H, W)"
        )
    if len(x_train) == 0 or len(x_test) == 0:
        raise InputError(f"{name}: empty split (train {len(x_train)}, test {len(x_test)} images)")

    top = int(max(y_train.max(), y_test.max()))
    if num_classes is None:
        num_classes = top + 1
    elif top >= num_classes:
        raise InputError(f"{name}: labels go up to {top} but num_classes={num_classes}")
    if class_names is None and stored_names is not None:
        class_names = [str(c) for c in stored_names.tolist()]
    names = [str(c) for c in class_names] if class_names is not None else None
    if names is not None and len(names) != num_classes:
        raise ConfigError(f"{name}: {len(names)} class_names given for {num_classes} classes")

    if mean is None or std is None:
        mean_, std_ = channel_stats(x_train)
        mean, std = mean if mean is not None else mean_, std if std is not None else std_
    channels = x_train.shape[1]
    if len(mean) != channels or len(std) != channels:
        raise ConfigError(
            f"{name}: mean and std need {channels} values (one per channel), got {list(mean)}, {list(std)}"
        )

    c, h, w = x_train.shape[1:]
    return DataBundle(
        name=name,
        train=ImageArrayDataset(x_train, y_train),
        test=ImageArrayDataset(x_test, y_test),
        num_classes=num_classes,
        input_shape=(int(c), int(h), int(w)),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        class_names=names,
        info={"source": "npz", **files, "shuffle_seed": shuffle_seed},
    )

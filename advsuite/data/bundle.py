"""``DataBundle``: a dataset's train/test splits plus what a model needs to know about it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from advsuite.errors import ConfigError

DATA_ROOT_ENV = "ADVSUITE_DATA"


@dataclass
class DataBundle:
    """Train and test splits yielding ``(float32 CHW image in [0, 1], int label)``."""

    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]
    #: per-channel statistics a model of this dataset normalises with
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    class_names: list[str] | None = None
    info: dict[str, object] = field(default_factory=dict)


def class_mixed_order(y: torch.Tensor, seed: int) -> torch.Tensor:
    """A fixed (seeded) order of a split in which classes take turns: the first k·C samples hold k of each class.

    A seeded shuffle, then a stable sort by each sample's rank within its class, so round ``r`` holds
    the ``r``-th sample of every class (classes in shuffled order). Evaluation takes the *first* n test
    images, and a split stored class by class would otherwise give n images of one class.
    """
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(int(seed)))
    labels = y[perm]
    rank = torch.zeros_like(labels)
    for c in labels.unique():
        members = (labels == c).nonzero().squeeze(1)
        rank[members] = torch.arange(len(members))
    return perm[torch.argsort(rank, stable=True)]


def select_indices(n_train: int, n_images: int | None, seed: int) -> torch.Tensor:
    """A seeded random subset of indices (sorted); all of them when ``n_images`` is None or larger."""
    if n_images is not None and n_images < 1:
        raise ConfigError(f"n_images must be >= 1, got {n_images}")
    keep = n_train if n_images is None else min(n_images, n_train)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n_train, generator=gen)[:keep].sort().values


def sample_tensors(dataset: Dataset, n: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random subset of ``n`` samples (all when ``n`` is None or larger) as (float32 NCHW, int64) tensors.

    Use it instead of the first ``n``: the embedded splits are ordered by class.
    """
    idx = select_indices(len(dataset), n, seed)  # type: ignore[arg-type]
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[0][idx].float(), dataset.tensors[1][idx].long()
    return as_tensors(Subset(dataset, idx.tolist()))


def as_tensors(dataset: Dataset, n: int | None = None, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` samples from ``start`` as (float32 NCHW, int64) tensors."""
    if (n is not None and n < 0) or start < 0:
        raise ConfigError(f"cannot take {n} samples from position {start}: both must be >= 0")
    if isinstance(dataset, TensorDataset):
        x, y = dataset.tensors[0], dataset.tensors[1]
        stop = len(x) if n is None else start + n
        return x[start:stop].float(), y[start:stop].long()
    total = len(dataset)  # type: ignore[arg-type]
    stop = total if n is None else min(total, start + n)
    # In-memory datasets (e.g. ImageArrayDataset's uint8 storage) convert a whole slice in one
    # vectorised step instead of a DataLoader loop over single images.
    slice_tensors = getattr(dataset, "slice_tensors", None)
    if callable(slice_tensors):
        return slice_tensors(start, stop)
    subset = torch.utils.data.Subset(dataset, range(start, stop))
    xs, ys = [], []
    for xb, yb in DataLoader(subset, batch_size=256, shuffle=False):
        xs.append(xb.float())
        ys.append(torch.as_tensor(yb).long())
    if not xs:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return torch.cat(xs), torch.cat(ys)

"""Datasets: every loader returns a :class:`DataBundle` of float32 CHW images in [0, 1]."""

from advsuite.data.bundle import DATA_ROOT_ENV, DataBundle, as_tensors, sample_tensors
from advsuite.data.embedded import mnist5k as _embedded_mnist5k
from advsuite.data.imagefolder import imagefolder_dataset
from advsuite.data.npz import ImageArrayDataset, npz_dataset
from advsuite.data.root import data_root
from advsuite.data.torchvision_sets import TORCHVISION_DATASETS, torchvision_dataset


def mnist5k(name: str = "mnist5k") -> DataBundle:
    """The embedded default (:func:`advsuite.data.embedded.mnist5k`).

    ``name`` exists because every ``conf/dataset`` YAML carries a ``name`` key that Hydra passes on.
    """
    bundle = _embedded_mnist5k()
    bundle.name = name
    return bundle


__all__ = [
    "DATA_ROOT_ENV",
    "TORCHVISION_DATASETS",
    "DataBundle",
    "ImageArrayDataset",
    "as_tensors",
    "data_root",
    "imagefolder_dataset",
    "mnist5k",
    "npz_dataset",
    "sample_tensors",
    "torchvision_dataset",
]

"""Datasets: every loader returns a :class:`DataBundle` of float32 CHW images in [0, 1]."""

from advsuite.data.bundle import DATA_ROOT_ENV, DataBundle, as_tensors
from advsuite.data.embedded import mnist5k

__all__ = ["DATA_ROOT_ENV", "DataBundle", "as_tensors", "mnist5k"]

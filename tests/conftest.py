"""Shared fixtures: an isolated advsuite home and tiny models trained once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from advsuite.data import DataBundle, as_tensors, mnist5k
from advsuite.models import Classifier


@pytest.fixture(scope="session", autouse=True)
def advsuite_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test writes its zoo cache, runs and index under one temporary home."""
    home = tmp_path_factory.mktemp("advsuite_home")
    patch = pytest.MonkeyPatch()
    patch.setenv("ADVSUITE_HOME", str(home))
    yield home
    patch.undo()


@pytest.fixture(scope="session")
def mnist() -> DataBundle:
    return mnist5k()


def tiny_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 7 * 7, 10),
    )


def train_tiny(mnist: DataBundle, x: torch.Tensor, y: torch.Tensor, epochs: int) -> Classifier:
    """:func:`tiny_cnn` trained on ``(x, y)`` with Adam (lr 3e-3, batches of 64, seed 0), in eval mode."""
    torch.manual_seed(0)
    model = Classifier(tiny_cnn(), num_classes=10, input_shape=(1, 28, 28), mean=mnist.mean, std=mnist.std, name="tiny")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=gen).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def tiny_model(mnist: DataBundle) -> Classifier:
    """A tiny CNN trained for three epochs on mnist5k (≈94% test accuracy, a few seconds)."""
    return train_tiny(mnist, *as_tensors(mnist.train), epochs=3)


@pytest.fixture(scope="session")
def test_batch(mnist: DataBundle, tiny_model: Classifier) -> tuple[torch.Tensor, torch.Tensor]:
    """16 test images the tiny model classifies correctly."""
    x, y = as_tensors(mnist.test)
    keep = (tiny_model.predict(x) == y).nonzero().squeeze(1)[::50][:16]
    return x[keep], y[keep]

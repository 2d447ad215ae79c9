"""Test helpers shared by several test modules."""

from __future__ import annotations

import torch
from torch import nn

from advsuite.models import Classifier


class RowCounter(nn.Module):
    """Wraps a network and counts the rows it evaluates."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.rows = 0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.rows += len(z)
        return self.net(z)


def counted(model: Classifier) -> tuple[Classifier, RowCounter]:
    """The same network and normalisation as ``model``, with every evaluated row counted."""
    counter = RowCounter(model.net)
    wrapped = Classifier(
        counter,
        num_classes=model.num_classes,
        input_shape=model.input_shape,
        mean=model.mean.flatten().tolist(),
        std=model.std.flatten().tolist(),
        name="counted",
    )
    return wrapped.eval(), counter

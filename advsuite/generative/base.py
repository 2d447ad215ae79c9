"""What every generative model in advsuite is: a network over (C, H, W) tensors that draws samples.

The models learn from whatever they are given: input gradients of surrogate models (the probe priors of
QEBA-I, NonLinear-BA and PSBA, in ``advsuite.attacks.boundary.priors``) or image crops (the patch
manifold of ``advsuite.attacks.patch``). They are rebuilt from :meth:`config` (a JSON-able dict of
constructor arguments) plus their ``state_dict``: that is how the artifact cache stores them.
"""

from __future__ import annotations

import abc
from typing import Any

import torch
from torch import nn


class GenerativeModel(nn.Module, abc.ABC):
    """A distribution over (C, H, W) tensors, sampled with an explicit ``torch.Generator``."""

    kind: str = "generative"

    def __init__(self, input_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        #: provenance once cached (meta.json plus ``path`` and ``source``); empty for a fresh fit
        self.info: dict[str, Any] = {}

    @property
    def device(self) -> torch.device:
        for t in [*self.parameters(), *self.buffers()]:
            return t.device
        return torch.device("cpu")

    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """Constructor keyword arguments (JSON-able) that rebuild this model's architecture."""

    @abc.abstractmethod
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` samples, shape (n, C, H, W), float32 on :attr:`device`.

        All randomness comes from ``generator`` (a ``torch.Generator`` on :attr:`device`), so the
        same generator state gives the same samples. Runs without autograd.
        """

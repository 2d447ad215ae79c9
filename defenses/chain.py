"""Several defenses one after the other (``defense=chain``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn

from advsuite.defense import Defense
from advsuite.errors import ConfigError


class Chain(Defense):
    """Apply ``defenses`` (Defense objects, or configs with a ``_target_``) in order.

    It is differentiable when all are, randomized when any is; its BPDA surrogate chains each member's forward
    (differentiable members) or surrogate (the others)."""

    def __init__(self, defenses: Sequence[Defense | Mapping[str, Any]], name: str = "") -> None:
        super().__init__()
        # members given as configs (``{_target_: ..., options}``, as defense=chain's YAML lists them) are built here
        members = [instantiate(d, _convert_="all") if isinstance(d, Mapping) else d for d in defenses]
        if not members:
            raise ConfigError("chain: defenses is empty; list at least one, e.g. defense.defenses=[...]")
        for i, d in enumerate(members):
            if not isinstance(d, Defense):
                raise ConfigError(f"chain: defenses[{i}] builds {type(d).__name__}, not an advsuite Defense")
        self.members = nn.ModuleList(members)
        self._chain: list[Defense] = members  # the same modules, typed
        self.differentiable = all(d.differentiable for d in members)
        self.randomized = any(d.randomized for d in members)
        self.name = name or "+".join(d.name for d in members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for d in self._chain:
            x = d(x)
        return x

    def surrogate(self, x: torch.Tensor) -> torch.Tensor:
        for d in self._chain:
            x = d(x) if d.differentiable else d.surrogate(x)
        return x

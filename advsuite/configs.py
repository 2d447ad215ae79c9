"""Helpers for values that may arrive as Hydra/OmegaConf containers."""

from __future__ import annotations

from typing import Any


def to_plain(value: Any) -> Any:
    """OmegaConf containers -> plain Python (dicts, lists); anything else unchanged."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value

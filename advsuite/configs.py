"""Helpers for Hydra: values that may arrive as OmegaConf containers, and the option syntax."""

from __future__ import annotations

import re
from typing import Any

#: config groups whose options advsuite validates itself (``advsuite.tasks.options``)
PLUGIN_GROUPS = ("attack", "defense", "detector", "task", "train", "face_attack")
_PLAIN_OPTION = re.compile(rf"^(?:{'|'.join(PLUGIN_GROUPS)})\.[A-Za-z_][\w.]*=")


def to_plain(value: Any) -> Any:
    """OmegaConf containers -> plain Python (dicts, lists); anything else unchanged."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def plugin_overrides(args: list[str]) -> list[str]:
    """``attack.key=value`` becomes ``++attack.key=value`` (a plugin's YAML lists only some of its options;
    advsuite checks the keys itself); everything else is left as typed. For the CLI and Hydra's compose API."""
    return [f"++{a}" if _PLAIN_OPTION.match(a) else a for a in args]

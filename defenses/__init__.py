"""Defenses (installed as ``advsuite.defenses``): each a module implementing :class:`advsuite.defense.Defense`."""

from __future__ import annotations

from typing import Any

from advsuite.defense import Defense
from advsuite.defenses.bit_depth import BitDepthReduction
from advsuite.defenses.chain import Chain
from advsuite.defenses.jpeg import JPEG
from advsuite.defenses.median import MedianSmoothing
from advsuite.defenses.perturbation_grading import PerturbationGrading
from advsuite.defenses.randomization import GaussianNoise, RandomResizePad
from advsuite.errors import ConfigError
from advsuite.models.custom import call_import_path


def no_defense(name: str = "none") -> None:
    """``defense=none``: no transform; :func:`advsuite.defense.defend` then returns the model itself."""
    return None


def custom(target: str = "", kwargs: dict[str, Any] | None = None, name: str = "custom") -> Defense:
    """``defense=custom defense.target=my_pkg.defenses:MyDefense``: a user's own Defense by import path."""
    defense = call_import_path(target, "defense", kwargs)
    if not isinstance(defense, Defense):
        raise ConfigError(f"defense.target={target!r} built a {type(defense).__name__}, not an advsuite Defense")
    defense.name = name if name != "custom" else target
    return defense


__all__ = [
    "JPEG",
    "BitDepthReduction",
    "Chain",
    "GaussianNoise",
    "MedianSmoothing",
    "PerturbationGrading",
    "RandomResizePad",
    "custom",
    "no_defense",
]

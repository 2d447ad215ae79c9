"""Validation of attack hyper-parameters: each raises :class:`ConfigError` naming the attack and field."""

from __future__ import annotations

import math
from collections.abc import Sequence

from advsuite.errors import ConfigError


def check_choice(owner: str, name: str, value: object, options: Sequence[object]) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``options``."""
    if value not in options:
        raise ConfigError(f"{owner}: {name} must be one of {list(options)}, got {value!r}")


def check_number(owner: str, name: str, value: float | None, *, low: float = 0.0, strict: bool = True) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a finite number above ``low`` (``>=`` if not strict)."""
    if value is None:
        return
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if strict else value >= low)
    if not ok:
        raise ConfigError(f"{owner}: {name} must be a number {'>' if strict else '>='} {low}, got {value!r}")


def check_flags(owner: str, attack: object, *names: str) -> None:
    """Raise :class:`ConfigError` unless each named attribute is a bool."""
    for name in names:
        if not isinstance(getattr(attack, name), bool):
            raise ConfigError(f"{owner}: {name} must be true or false, got {getattr(attack, name)!r}")


def check_int(owner: str, name: str, value: object, low: int) -> None:
    """Raise :class:`ConfigError` unless ``value`` is an integer >= ``low``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{owner}: {name} must be an integer >= {low}, got {value!r}")

"""Checks at the edge of the system: inputs are float NCHW tensors inside the model's bounds, options are
known, and hyper-parameters (of attacks, defenses, detectors) have valid values; each raises a one-line
:class:`ConfigError` or :class:`InputError` naming the owner and the field."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from difflib import get_close_matches

import torch

from advsuite.errors import ConfigError, InputError


def check_images(
    x: torch.Tensor,
    *,
    bounds: tuple[float, float] = (0.0, 1.0),
    shape: Sequence[int] | None = None,
    name: str = "inputs",
) -> None:
    """Raise :class:`InputError` unless ``x`` is a float (N, C, H, W) batch inside ``bounds``.

    Inputs are never clipped silently: a value outside the range is a bug in the caller.
    """
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputError(f"{name} must be a float tensor scaled to {bounds}, got dtype {x.dtype}")
    if x.dim() != 4:
        want = f"(N, {', '.join(map(str, shape))})" if shape else "(N, C, H, W)"
        raise InputError(f"{name} must have shape {want}, got {tuple(x.shape)}")
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise InputError(f"{name} must have shape (N, {', '.join(map(str, shape))}), got {tuple(x.shape)}")
    if x.numel() == 0:
        return
    lo, hi = (float(v) for v in x.detach().aminmax())  # one pass: NaN and inf show in the extremes
    if not (math.isfinite(lo) and math.isfinite(hi)):
        finite = torch.isfinite(x.detach())
        bad = int((~finite).flatten(1).any(1).sum())
        kind = "NaN" if bool(x.detach().isnan().any()) else "inf"
        raise InputError(f"{name} contain {kind} values (in {bad} of {len(x)} images); images must be finite")
    if not (lo >= bounds[0] and hi <= bounds[1]):
        raise InputError(
            f"{name} must lie in [{bounds[0]}, {bounds[1]}] (advsuite expects unnormalised images; "
            f"normalisation happens inside the Classifier), got values in [{lo:.4g}, {hi:.4g}]"
        )


def check_labels(y: torch.Tensor, n: int, num_classes: int, name: str = "labels") -> None:
    """Raise :class:`InputError` unless ``y`` holds ``n`` integer class indices."""
    if not isinstance(y, torch.Tensor) or y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise InputError(f"{name} must be an integer tensor of class indices")
    if tuple(y.shape) != (n,):
        raise InputError(f"{name} must have shape ({n},), got {tuple(y.shape)}")
    if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise InputError(f"{name} must lie in [0, {num_classes - 1}], got [{int(y.min())}, {int(y.max())}]")


def check_known_options(given: Iterable[str], valid: Iterable[str], label: str, how: str = "") -> None:
    """Raise :class:`ConfigError` naming every option in ``given`` that is not in ``valid``, with the closest
    valid one and the full list (``how`` is appended, e.g. how to set an option)."""
    valid = sorted(valid)
    unknown = sorted(str(k) for k in given if str(k) not in valid)
    if not unknown:
        return
    hints = [f"{k!r} (did you mean {c[0]!r}?)" if (c := get_close_matches(k, valid, 1)) else repr(k) for k in unknown]
    raise ConfigError(f"{label} has no option {', '.join(hints)}; valid options: {', '.join(valid)}{how}")


# ------------------------------------------------------------------------------------------------ hyper-parameters


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

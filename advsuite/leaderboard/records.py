"""What the leaderboard reads from a record, and the one filter every table applies."""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from advsuite.results.record import finite_number, upgrade_record


def metric_titles(record: Mapping[str, Any]) -> dict[str, str]:
    """The attack's own leaderboard metrics (metric -> column title) as its record carries them; for a record
    written before they travelled with it, what the attack's class (the config's ``_target_``) declares."""
    titles = record.get("metric_titles")
    if isinstance(titles, Mapping):
        return {str(k): str(v) for k, v in titles.items()}
    return dict(_declared_titles(((record.get("config") or {}).get("attack") or {}).get("_target_")))


@functools.cache
def _declared_titles(target: Any) -> tuple[tuple[str, str], ...]:
    from advsuite.attack import Attack

    module, _, name = str(target or "").rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return ()  # an attack this installation does not have: no attack-specific columns
    if not (isinstance(cls, type) and issubclass(cls, Attack)):
        return ()
    return tuple(cls.leaderboard_metrics.items())


@dataclass(frozen=True)
class _Entry:
    """One attack's result at one epsilon, taken from one record."""

    attack: str
    robust_accuracy: float | None
    record: Mapping[str, Any]

    @property
    def created(self) -> str:
        return str(self.record.get("created") or "")

    @property
    def order(self) -> tuple[float, str]:
        """Sort key for "latest": the parsed time (UTC offsets differ between machines), then the text."""
        try:
            stamp = datetime.fromisoformat(self.created.replace("Z", "+00:00"))
        except ValueError:
            return (-math.inf, self.created)
        return (stamp.timestamp(), self.created)  # a naive time counts as local time


def _targeted(record: Mapping[str, Any]) -> bool:
    """Whether the run was targeted: ``names.targeted``, else the config's ``attack.targeted`` (default no)."""
    value = (record.get("names") or {}).get("targeted")
    if value is None:
        value = ((record.get("config") or {}).get("attack") or {}).get("targeted")
    return bool(value)


def _model_key(names: Mapping[str, Any]) -> str:
    """What identifies a model: its source (or name), plus its weights when they are hashed."""
    model = str(names.get("model_source") or names.get("model"))
    weights = names.get("weights_hash")
    return f"{model}@{str(weights)[:8]}" if weights else model


def _versions(record: Mapping[str, Any]) -> str:
    versions = record.get("versions") or {}
    parts = [f"{name} {versions[name]}" for name in ("advsuite", "torch") if versions.get(name)]
    return " / ".join(parts)


def _metric(record: Mapping[str, Any], key: str) -> float | None:
    return finite_number((record.get("metrics") or {}).get(key))


def _eps_key(eps: float) -> float:
    # "0.1" from a by-eps dict and 0.1 from the config must meet in one row
    return round(eps, 9)


def evaluate_records(
    records: Iterable[Mapping[str, Any]], dataset: str | None, norm: str | None
) -> Iterator[Mapping[str, Any]]:
    """The records every table is built from: finished ``evaluate`` runs, of ``dataset`` and
    ``norm`` when given."""
    for record in records:
        record = upgrade_record({**record, "names": dict(record.get("names") or {})})
        names = record["names"]
        if record.get("status") != "finished" or names.get("task", "evaluate") != "evaluate":
            continue
        if dataset is not None and names.get("dataset") != dataset:
            continue
        if norm is not None and names.get("norm") != norm:
            continue
        yield record

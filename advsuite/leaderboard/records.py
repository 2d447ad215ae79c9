"""What the leaderboard reads from a record, and the one filter every table applies."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from advsuite.results.record import finite_number

#: attack-specific metrics (``Attack.extra_metrics``) that get a column per attack when a record has them
EXTRA_METRICS: dict[str, str] = {
    "fooling_rate": "fooling rate",
    "transfer_fooling_rate": "transfer fooling rate",
    "patch_success": "patch success",
    "adapted_success": "adapted-model success",
    "evasive_success": "evasive success",
    "restored_exact": "bit-exact restores",
}


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
    records: Iterable[Mapping[str, Any]], dataset: str | None, threat_model: str | None
) -> Iterator[Mapping[str, Any]]:
    """The records every table is built from: finished ``evaluate`` runs, of ``dataset`` and
    ``threat_model`` when given."""
    for record in records:
        names = record.get("names") or {}
        if record.get("status") != "finished" or names.get("task", "evaluate") != "evaluate":
            continue
        if dataset is not None and names.get("dataset") != dataset:
            continue
        if threat_model is not None and names.get("threat_model") != threat_model:
            continue
        yield record

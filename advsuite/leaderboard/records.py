"""What the leaderboard reads from a record (:class:`RunView`, a typed view), and the one filter every table
applies (:func:`evaluate_records`)."""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
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
class RunView:
    """A finished ``evaluate`` record as the tables read it: typed fields, absent values as ``None``.

    Built by :func:`evaluate_records` (records in today's words, see
    :func:`advsuite.results.record.upgrade_record`); ``record`` keeps the whole record for what is rarer.
    """

    record: Mapping[str, Any]

    @property
    def names(self) -> Mapping[str, Any]:
        return self.record.get("names") or {}

    @property
    def run_id(self) -> str:
        return str(self.record.get("run_id"))

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

    @property
    def dataset(self) -> str:
        return str(self.names.get("dataset"))

    @property
    def model(self) -> str:
        """What identifies a model: its source (or name), plus its weights when they are hashed."""
        model = str(self.names.get("model_source") or self.names.get("model"))
        weights = self.names.get("weights_hash")
        return f"{model}@{str(weights)[:8]}" if weights else model

    @property
    def defense(self) -> str:
        return str(self.names.get("defense") or "none")

    @property
    def attack(self) -> str:
        return str(self.names.get("attack"))

    @property
    def norm(self) -> str:
        return str(self.names.get("norm"))

    @property
    def access(self) -> str | None:
        access = self.names.get("access")
        return None if access is None else str(access)

    @property
    def epsilon(self) -> float | None:
        return finite_number(self.names.get("epsilon"))

    @property
    def targeted(self) -> bool:
        """``names.targeted``, else the config's ``attack.targeted`` (default no)."""
        value = self.names.get("targeted")
        if value is None:
            value = ((self.record.get("config") or {}).get("attack") or {}).get("targeted")
        return bool(value)

    @property
    def versions(self) -> str:
        versions = self.record.get("versions") or {}
        return " / ".join(f"{name} {versions[name]}" for name in ("advsuite", "torch") if versions.get(name))

    @property
    def metric_titles(self) -> dict[str, str]:
        return metric_titles(self.record)

    @property
    def is_audit(self) -> bool:
        return self.names.get("task") == "audit"

    def artifact(self, name: str) -> str | None:
        """The path of the record's artifact ``name`` (inside its run folder), or ``None``."""
        artifact, run_dir = (self.record.get("artifacts") or {}).get(name), self.record.get("run_dir")
        return str(Path(str(run_dir)) / str(artifact)) if artifact and run_dir else None

    def metric(self, key: str) -> float | None:
        """A scalar metric (``None`` when absent or not a finite number)."""
        return finite_number((self.record.get("metrics") or {}).get(key))

    def metric_map(self, key: str) -> Mapping[str, Any] | None:
        """A metric that maps keys (epsilons, budgets) to values, or ``None``."""
        value = (self.record.get("metrics") or {}).get(key)
        return value if isinstance(value, Mapping) else None


@dataclass(frozen=True)
class _Entry:
    """One attack's result at one epsilon, taken from one run."""

    attack: str
    robust_accuracy: float | None
    run: RunView


def eps_key(eps: float) -> float:
    # "0.1" from a by-eps dict and 0.1 from the config must meet in one row
    return round(eps, 9)


def evaluate_records(records: Iterable[Mapping[str, Any]], dataset: str | None, norm: str | None) -> Iterator[RunView]:
    """The runs every table is built from: finished ``evaluate`` and ``audit`` records (an audit is one column,
    its lowest robust accuracy, with its flag count), of ``dataset`` and ``norm`` when given."""
    for record in records:
        run = RunView(upgrade_record({**record, "names": dict(record.get("names") or {})}))
        if record.get("status") != "finished" or run.names.get("task", "evaluate") not in ("evaluate", "audit"):
            continue
        if (dataset is not None and run.dataset != dataset) or (norm is not None and run.norm != norm):
            continue
        yield run

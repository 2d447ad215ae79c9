"""Adaptive-attack audits of defenses: :func:`audit` runs the battery, then the checks, and reports.

A killed audit resumes: with ``state_dir`` set, every finished stage is saved there (``<stage>.json``, keyed
by the images and settings) and a rerun with the same inputs skips it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from advsuite.artifacts import content_key, state_hash
from advsuite.defense import Defense, defend
from advsuite.models.classifier import Classifier

from .battery import (
    STAGE_FORMAT,
    Settings,
    Stage,
    decision_stage,
    eps_curve,
    random_stage,
    square_stage,
    transfer_stage,
    whitebox_stages,
)
from .checks import comparison_checks, convergence_checks, gradient_check, naive_gap_check, output_checks
from .report import AuditReport

__all__ = ["AuditReport", "Settings", "audit"]


def audit(
    model: Classifier,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    defense: Defense | None = None,
    settings: Settings | None = None,
    surrogate: Classifier | None = None,
    state_dir: Path | None = None,
    title: str = "",
    verbose: bool = True,
) -> AuditReport:
    """Audit ``model`` behind ``defense`` on the images it classifies correctly among ``x``.

    ``model`` is the undefended classifier (or one with its defense built in, then ``defense=None``);
    ``surrogate`` an undefended model of another architecture for the transfer stage (skipped if None).
    """
    s = settings or Settings()
    defended, naive = defend(model, defense), defend(model, defense, bpda=False)
    x, y = x.to(model.device), y.to(model.device)
    clean = defended.predict(x, s.batch_size) == y
    x, y = x[clean], y[clean]
    declared_random = bool(defense is not None and defense.randomized)
    images = state_hash({"x": x, "y": y})
    weights = state_hash(defended.state_dict()) if state_dir is not None else ""
    key = content_key(
        {
            "format": STAGE_FORMAT,
            "images": images,
            "weights": weights,
            "settings": dataclasses.asdict(s),
            "title": title,
        }
    )
    builders: dict[str, Callable[[], Stage]] = {
        **whitebox_stages(defended, naive, x, y, s),
        "square": lambda: square_stage(defended, x, y, s),
        "hsja": lambda: decision_stage(defended, x, y, s),
        "random": lambda: random_stage(defended, x, y, s),
        "unbounded": lambda: eps_curve(defended, x, y, s),
    }
    if s.norm != "linf":
        builders.pop("square")  # Square is Linf-only here
    if surrogate is not None:
        builders["transfer"] = lambda: transfer_stage(defended, surrogate, x, y, s)
    stages: dict[str, Stage] = {}
    bar = tqdm(builders.items(), desc="audit", unit="stage", disable=not verbose)
    for name, build in bar:
        bar.set_postfix(stage=name)
        stages[name] = _cached(state_dir, key, name, build)
    checks = [*output_checks(defended, x, s.eot_iter, declared_random), gradient_check(naive, x, y)]
    checks += comparison_checks(stages) + convergence_checks(stages) + [naive_gap_check(stages)]
    return AuditReport(title or defended.name, s, float(clean.float().mean()), len(x), stages, checks, len(clean))


def _cached(state_dir: Path | None, key: str, name: str, build: Callable[[], Stage]) -> Stage:
    """A stage from ``state_dir`` when an earlier run with the same key finished it; else run and save it."""
    path = state_dir / f"{name}.json" if state_dir is not None else None
    if path is not None and path.exists():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            return Stage(saved["name"], saved["kind"], saved["robust"], saved["details"])
    stage = build()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, **dataclasses.asdict(stage)}))
        tmp.replace(path)  # atomic: a killed audit never leaves half a stage
    return stage

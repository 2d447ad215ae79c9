"""Tasks: what one run does, chosen by ``task=`` (evaluate, train, leaderboard, audit, prior, face, backdoor…)."""

from __future__ import annotations

import importlib

from omegaconf import DictConfig

from advsuite.errors import ConfigError
from advsuite.tasks.options import check_launch, check_run_options

# task name -> "module:function"; imported lazily so each task only loads what it needs
TASKS = {
    "evaluate": "advsuite.tasks.evaluate:run_evaluate",
    "train": "advsuite.tasks.train:run_train",
    "leaderboard": "advsuite.tasks.leaderboard:run_leaderboard",
    "audit": "advsuite.attacks.audit.task:run_audit",
    # distributed adversarial training traced against its single-process reference
    "trace": "advsuite.distributed.task:run_trace",
    # the decision-based family's own task: fit a probe prior ahead of a sweep
    "prior": "advsuite.attacks.boundary.priors.task:run_prior",
    # the face family's own task: patches judged on held-out face embedders at a fixed FAR
    "face": "advsuite.attacks.face.task:run_face",
    # backdoors: poison and train (the first stage), then defend or identify the poison from its record
    "backdoor": "advsuite.attacks.backdoor.task:run_backdoor",
    "backdoor_defense": "advsuite.defenses.backdoor.task:run_backdoor_defense",
    "backdoor_identify": "advsuite.detectors.backdoor.task:run_backdoor_identify",
}


def run_task(cfg: DictConfig) -> object:
    """Run ``cfg.task.name``. Its options are checked first, before any data or model loads
    (``task=evaluate`` checks them inside its recorder, so a refused run still leaves a failed record)."""
    name = cfg.task.name
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}")
    check_launch(cfg)
    if cfg.get("deterministic") is True:
        from advsuite.seeding import configure_determinism

        configure_determinism()
    elif cfg.get("deterministic") not in (False, None):
        raise ConfigError(f"deterministic must be true or false, got {cfg.get('deterministic')!r}")
    if name != "evaluate":
        check_run_options(cfg)
    module, function = TASKS[name].split(":")
    return getattr(importlib.import_module(module), function)(cfg)

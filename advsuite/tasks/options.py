"""Checks of a composed run config, made before any data, model or attack artifact loads.

A typo or a bad value should cost a second, not a model training: every task calls
:func:`check_run_options` first, and ``task=evaluate`` builds its attack and its defense (each validates its own
values) before it touches data.
"""

from __future__ import annotations

import importlib.resources
import inspect
import math
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from hydra.utils import get_class, get_method
from omegaconf import DictConfig, OmegaConf

from advsuite.attack import Attack, construct_attack
from advsuite.configs import to_plain
from advsuite.defense import Defense
from advsuite.detector import Detector
from advsuite.errors import ConfigError
from advsuite.models.classifier import Classifier
from advsuite.validation import check_known_options

DEVICE_HINT = "auto, cpu, cuda, cuda:N or mps"


def check_launch(cfg: DictConfig) -> None:
    """Under torchrun (``WORLD_SIZE`` > 1) only ``task=train train=dat`` runs, on a partition of its workers the
    process count divides; refused here, before any process loads data."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return
    from advsuite.training import Recipe

    name = str(cfg.task.get("name"))
    recipe = Recipe.coerce(to_plain(cfg.get("train")))
    if name not in ("train", "trace") or getattr(recipe, "trainer", "standard") != "dat":
        raise ConfigError(f"{world} processes were launched (torchrun), but only train=dat (task=train or "
                          f"task=trace) runs across processes; run task={name} with one process: "
                          "python -m advsuite ...")  # fmt: skip
    from advsuite.distributed.plan import workers_per_rank

    workers_per_rank(recipe.batch_size, recipe.workers, world)  # type: ignore[attr-defined]
    from advsuite.distributed.sharding import shard_group_size

    shard_group_size(recipe.parallel, recipe.shard_group, world)  # type: ignore[attr-defined]


def check_run_options(cfg: DictConfig) -> None:
    """The top-level options and the task's own options (unknown keys and bad values)."""
    _whole_number(cfg.get("n_samples"), "n_samples", minimum=1, hint="the number of test images to attack")
    _whole_number(cfg.get("batch_size"), "batch_size", minimum=1, hint="images per attack call")
    _whole_number(cfg.get("seed"), "seed", minimum=0, hint="any whole number >= 0")
    device = str(cfg.get("device", "auto"))
    if device not in ("auto", "cpu", "cuda", "mps") and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise ConfigError(f"device={device!r} is not a device; use {DEVICE_HINT}")
    if cfg.get("train") is not None:
        from advsuite.training import Recipe

        Recipe.coerce(to_plain(cfg.train))
    task = cfg.task
    name = str(task.get("name"))
    _known_keys(task, declared_task_options(name), f"task {name}", "task")
    if name == "evaluate":
        _check_evaluate_task(task)
    elif name == "leaderboard":
        from advsuite.leaderboard import FORMATS

        formats = list(task.get("formats") or [])
        if not formats or any(f not in FORMATS for f in formats):
            raise ConfigError(f"task.formats={formats} must be a non-empty list drawn from {list(FORMATS)}")
        _optional_number(task.get("epsilon"), "task.epsilon")


def build_run_attack(cfg: DictConfig, choice: str | None = None) -> Attack:
    """The attack of ``cfg.attack``, its options checked against the attack's declared ones."""
    label = f"attack {choice}" if choice else "the attack config"
    options = OmegaConf.to_container(cfg.attack, resolve=True)
    if not isinstance(options, dict) or "_target_" not in options:
        raise ConfigError(f"{label} has no _target_ (the Attack class to build, e.g. advsuite.attacks.whitebox.PGD)")
    target = str(options.pop("_target_"))
    try:
        cls = get_class(target)
    except Exception as exc:  # Hydra raises ImportError or ValueError subclasses
        raise ConfigError(f"{label}: cannot import its _target_ {target!r} ({exc})") from exc
    return construct_attack(cls, {str(k): v for k, v in options.items()}, label)


def build_run_defense(cfg: DictConfig, choice: str | None = None) -> Defense | None:
    """The defense of ``cfg.defense`` (``None`` for ``defense=none``), its options checked against the
    signature of its ``_target_`` (the defense's own constructor validates the values)."""
    factory, kwargs, label = _component(cfg, "defense", choice, "advsuite.defenses.BitDepthReduction")
    defense = factory(**kwargs)
    if defense is not None and not isinstance(defense, Defense):
        raise ConfigError(f"{label}: its _target_ built a {type(defense).__name__}, not an advsuite Defense")
    return defense


def build_run_detector(cfg: DictConfig, choice: str | None = None) -> Callable[[Classifier], Detector | None]:
    """What builds the detector of ``cfg.detector`` once the model is loaded (``None`` for ``detector=none``);
    its options are checked now against the signature of its ``_target_`` (which takes the model as ``model``)."""
    if cfg.get("detector") is None:
        return lambda model: None
    factory, kwargs, label = _component(cfg, "detector", choice, "advsuite.detectors.FeatureSqueezing", ("model",))

    def build(model: Classifier) -> Detector | None:
        detector = factory(model=model, **kwargs)
        if detector is not None and not isinstance(detector, Detector):
            raise ConfigError(f"{label}: its _target_ built a {type(detector).__name__}, not an advsuite Detector")
        return detector

    return build


def _component(
    cfg: DictConfig, group: str, choice: str | None, example: str, supplied: tuple[str, ...] = ()
) -> tuple[Callable[..., Any], dict[str, Any], str]:
    """The factory named by ``cfg.<group>._target_`` and its options, checked against its signature
    (``supplied`` are the arguments the pipeline passes itself); and the label errors use."""
    section = cfg[group]
    label = f"{group} {choice or section.get('name', '')}".strip()
    options = OmegaConf.to_container(section, resolve=True)
    if not isinstance(options, dict) or "_target_" not in options:
        raise ConfigError(f"{label} has no _target_ (the class to build, e.g. {example})")
    target = str(options.pop("_target_"))
    kwargs = {str(k): v for k, v in options.items()}
    try:
        factory = get_method(target)
    except Exception as exc:  # Hydra raises ImportError or ValueError subclasses
        raise ConfigError(f"{label}: cannot import its _target_ {target!r} ({exc})") from exc
    if getattr(factory, "threat", None) == "poison":
        raise ConfigError(f"{label} is a backdoor defense: run it with task=backdoor_defense "
                          f"backdoor=<the task=backdoor run> {group}={choice or section.get('name')}")  # fmt: skip
    valid = [p for p in inspect.signature(factory).parameters if p != "self" and p not in supplied]
    _known_keys(kwargs, valid, label, group)
    return factory, kwargs, label


def declared_task_options(name: str) -> tuple[str, ...]:
    """The keys a task's YAML declares (``conf/task/<name>.yaml``): the only options it reads."""
    folder = importlib.resources.files("advsuite.conf") / "task"
    file = folder / f"{name}.yaml"
    if not file.is_file():
        valid = sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))
        raise ConfigError(f"unknown task {name!r}; valid tasks: {', '.join(valid)}")
    declared = OmegaConf.create(file.read_text(encoding="utf-8"))
    assert isinstance(declared, DictConfig)
    return tuple(str(k) for k in declared if k != "defaults")


def _check_evaluate_task(task: DictConfig) -> None:
    from advsuite.evaluation import check_budgets

    if task.get("targeted_selection") not in ("random", "next"):
        raise ConfigError(f"task.targeted_selection must be 'random' or 'next', got {task.get('targeted_selection')!r}")
    budgets = list(task.get("budgets") or [])
    if not budgets:
        raise ConfigError("task.budgets must list at least one query budget, e.g. task.budgets=[1000,2000]")
    check_budgets(budgets)
    for key in ("mse_threshold", "l2_threshold"):
        value = _optional_number(task.get(key), f"task.{key}")
        if value is not None and value < 0:
            raise ConfigError(f"task.{key} must be >= 0 or null, got {value}")
    _whole_number(task.get("grid_images"), "task.grid_images", minimum=0, hint="images in the example grid")


def _known_keys(node: Mapping[str, Any] | DictConfig, valid: Iterable[str], label: str, prefix: str) -> None:
    check_known_options(node, valid, label, f" (set one with {prefix}.<option>=<value>)")


def _whole_number(value: Any, key: str, *, minimum: int, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key} must be a whole number >= {minimum} ({hint}), got {value!r}")
    return value


def _optional_number(value: Any, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number or null, got {value!r}")
    return float(value)

"""The Python API: wrap your own model, build any attack, evaluate and record in one call.

Everything here is what the CLI does, without Hydra: the same attack names and options as
``attack=...``, the same results store and leaderboard.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.resources
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_class, get_method
from omegaconf import DictConfig, OmegaConf
from torch import nn

from advsuite.attack import Attack, construct_attack
from advsuite.errors import ConfigError, ModelError
from advsuite.evaluation import Evaluation, evaluate
from advsuite.models.checkpoints import weights_hash
from advsuite.models.classifier import Classifier, eval_mode
from advsuite.paths import advsuite_home
from advsuite.recording import RunRecorder, format_summary, run_names, write_artifacts


def wrap_model(
    module: nn.Module,
    *,
    input_shape: Sequence[int],
    num_classes: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    name: str | None = None,
    device: str | torch.device | None = None,
) -> Classifier:
    """Wrap any ``nn.Module`` mapping images to logits as a :class:`Classifier`.

    Give ``mean``/``std`` if the module expects normalised inputs (the Classifier then takes
    [0, 1] images and normalises inside); leave them out if it normalises itself. ``num_classes``
    is read from a forward pass on zeros when omitted, and checked against it when given.
    """
    if device is not None:
        module = module.to(device)
    name = name or type(module).__name__
    probe_device = next((p.device for p in module.parameters()), torch.device("cpu"))
    with torch.no_grad(), eval_mode(module):
        try:
            out = module(torch.zeros(2, *input_shape, device=probe_device))
        except Exception as exc:
            raise ModelError(
                f"model {name!r} raised {type(exc).__name__} on an input of shape {(2, *input_shape)}: {exc}"
            ) from exc
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or len(out) != 2:
        seen = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"model {name!r} must return logits of shape (N, num_classes), got {seen} for N=2")
    if not torch.isfinite(out).all():
        raise ModelError(
            f"model {name!r} returned NaN or inf logits for an all-zero input of shape {(2, *input_shape)}; "
            "check its weights (a corrupt or diverged checkpoint?) and that it was built for this input size"
        )
    if num_classes is not None and out.shape[1] != num_classes:
        raise ModelError(f"model {name!r} returns {out.shape[1]} logits per image, but num_classes={num_classes}")
    classifier = Classifier(
        module, num_classes=int(out.shape[1]), input_shape=input_shape, mean=mean, std=std, bounds=bounds, name=name
    ).to(probe_device)
    classifier.info = {"model_source": f"{type(module).__module__}.{type(module).__qualname__}"}
    return classifier


def _config_names(group: str) -> list[str]:
    folder = importlib.resources.files("advsuite.conf") / group
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def _by_threat(group: str, threat: str | None) -> list[str]:
    """A group's config names; with ``threat``, only those whose ``_target_`` declares it (``evasion`` unless it
    says otherwise; a YAML without ``_target_`` extends another config of the group: an evasion one)."""
    names = _config_names(group)
    if threat is None:
        return names
    folder = importlib.resources.files("advsuite.conf") / group
    kept = []
    for name in names:
        node = OmegaConf.create((folder / f"{name}.yaml").read_text(encoding="utf-8"))
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        if (getattr(get_method(str(target)), "threat", "evasion") if target else "evasion") == threat:
            kept.append(name)
    return kept


def attack_names(threat: str | None = None) -> list[str]:
    """The attack config names (the options of ``attack=`` on the command line); ``threat="evasion"`` keeps the
    attacks ``task=evaluate`` runs, ``threat="poison"`` the backdoor attacks ``task=backdoor`` runs."""
    return _by_threat("attack", threat)


def defense_names(threat: str | None = None) -> list[str]:
    """The defense config names (the options of ``defense=``); ``threat="evasion"`` keeps the ones in front of the
    model in ``task=evaluate``, ``threat="poison"`` the backdoor defenses of ``task=backdoor_defense``."""
    return _by_threat("defense", threat)


def detector_names() -> list[str]:
    """The detector config names (the options of ``detector=``)."""
    return _config_names("detector")


def _attack_config(name: str, *, seed: Any, verbose: Any) -> dict[str, Any]:
    """The attack's config as Hydra composes it (its ``defaults`` list included), resolved."""
    overrides = [f"attack={name}", f"seed={int(seed)}", f"verbose={bool(verbose)}"]
    if GlobalHydra.instance().is_initialized():  # inside a Hydra app or test: its search path has our configs
        cfg = compose("config", overrides)
    else:
        with initialize_config_module(config_module="advsuite.conf", version_base="1.3"):
            cfg = compose("config", overrides)
    config = OmegaConf.to_container(cfg.attack, resolve=True)
    assert isinstance(config, dict)
    return {str(k): v for k, v in config.items()}


def build_attack(attack: str | type[Attack], **options: Any) -> Attack:
    """An attack by its config name (``"pgd"``, ``"fb_hsja"``, ...) or its class, with options.

    Options override the config's defaults; an option the attack does not have raises
    :class:`ConfigError` listing the valid ones.
    """
    if isinstance(attack, str):
        if attack not in attack_names():
            raise ConfigError(f"unknown attack {attack!r}; valid names: {', '.join(attack_names())}")
        config = _attack_config(attack, seed=options.get("seed", 0), verbose=options.get("verbose", False))
        cls = get_class(str(config.pop("_target_")))
        kwargs = {str(k): v for k, v in config.items()}
        label = f"attack {attack}"
    else:
        cls, kwargs, label = attack, {}, getattr(attack, "__name__", repr(attack))
    return construct_attack(cls, {**kwargs, **options}, label)


def evaluate_and_record(
    model: Classifier,
    attack: Attack | str,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    targets: torch.Tensor | None = None,
    starting_points: torch.Tensor | None = None,
    dataset: str = "custom",
    model_name: str | None = None,
    attack_name: str | None = None,
    defense: str = "none",
    seed: int = 0,
    home: str | Path | None = None,
    batch_size: int = 256,
    verbose: bool = False,
    budgets: Sequence[int] = (1000, 2000, 5000, 10000),
    mse_threshold: float | None = 1e-3,
    l2_threshold: float | None = None,
) -> dict[str, Any]:
    """Evaluate ``attack`` on ``(x, y)`` and record the run in the results store; returns the record.

    The record is the one the CLI writes (``task=leaderboard`` lists it). Its model column is the
    model's source (import path) and a hash of its weights. ``budgets`` and the thresholds set the
    query-efficiency metrics of query attacks (see :func:`advsuite.evaluation.evaluate`).
    """
    if isinstance(attack, str):
        attack_name = attack_name or attack
        attack = build_attack(attack)
    attack_name = attack_name or type(attack).__name__
    model_name = model_name or model.name
    model.info.setdefault("model_source", model_name)
    model.info["weights_hash"] = model.info.get("weights_hash") or weights_hash(model.net)
    attack_config: dict[str, Any] = {}
    if dataclasses.is_dataclass(attack) and not isinstance(attack, type):
        attack_config = {f.name: _jsonable(getattr(attack, f.name)) for f in dataclasses.fields(attack)}
    config = {
        "api": True,
        "dataset": {"name": dataset, "n": len(x), "data_hash": _tensor_hash(x, y)},
        "model": {"source": model.info["model_source"], "weights_hash": model.info["weights_hash"]},
        "attack": {"_target_": f"{type(attack).__module__}.{type(attack).__qualname__}", **attack_config},
        "defense": {"name": defense},
        "seed": seed,
    }
    recorder = RunRecorder(config, home=advsuite_home(home), seed=seed)
    with recorder:
        recorder.names = run_names(
            dataset=dataset, model_name=model_name, attack_name=attack_name, attack=attack, model=model, defense=defense
        )
        torch.manual_seed(seed)
        ev: Evaluation = evaluate(
            model,
            attack,
            x,
            y,
            targets=targets,
            starting_points=starting_points,
            batch_size=batch_size,
            verbose=verbose,
            budgets=budgets,
            mse_threshold=mse_threshold,
            l2_threshold=l2_threshold,
        )
        recorder.finish(ev, write_artifacts(recorder.run_dir, ev, attack_name))
        if verbose:
            print(format_summary(recorder.names, ev.metrics, ev.metric_titles))
    return recorder.record


#: the audit lives with the attacks it runs; the core names it by import path, as the task registry does
AUDIT = "advsuite.attacks.audit"


def audit(model: Classifier, x: torch.Tensor, y: torch.Tensor, **options: Any) -> Any:
    """An adaptive-attack audit of ``model`` (behind ``defense=``) on ``x, y``: returns an ``AuditReport``
    (``.verdict``, ``.summary()``, ``.markdown()``, ``.html()``, ``.write(folder)``). Options: ``defense``,
    ``settings`` (``advsuite.attacks.audit.Settings``: norm, eps, steps, eot_iter, ...), ``surrogate`` (an
    undefended model of another architecture), ``state_dir`` (resume), ``title``, ``verbose``.
    See docs/audit.md."""
    return importlib.import_module(AUDIT).audit(model, x, y, **options)


def run(*overrides: str) -> Any:
    """Run any task as the command line would (``advsuite.run("task=backdoor", "attack=badnets")`` is
    ``python -m advsuite task=backdoor attack=badnets``): the same config groups, checks, caches and records;
    returns what the task returns (a record for ``evaluate``, ``backdoor``, ``backdoor_defense``, ...)."""
    from advsuite.tasks import run_task

    if GlobalHydra.instance().is_initialized():  # inside a Hydra app or test: its search path has our configs
        cfg = compose("config", list(overrides))
    else:
        with initialize_config_module(config_module="advsuite.conf", version_base="1.3"):
            cfg = compose("config", list(overrides))
    return run_task(cfg)


def _jsonable(value: Any) -> Any:
    """An attack field as the record stores it: a loaded module (e.g. a learned prior) by its description."""
    if isinstance(value, torch.nn.Module):
        config = getattr(value, "config", None)
        return {"module": type(value).__name__, "config": config() if callable(config) else None}
    return value


def _tensor_hash(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]

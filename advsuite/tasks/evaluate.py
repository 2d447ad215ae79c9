"""``task=evaluate``: attack ``n_samples`` test images, re-check, plot and record the run."""

from __future__ import annotations

import time
import traceback
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from advsuite.attack import Attack
from advsuite.data import DataBundle, as_tensors
from advsuite.device import resolve_device
from advsuite.errors import ConfigError
from advsuite.evaluation import Evaluation, evaluate
from advsuite.models.classifier import Classifier
from advsuite.models.zoo import load_model
from advsuite.paths import advsuite_home
from advsuite.plots import plot_distortion_vs_queries, plot_robust_accuracy, save_image_grid
from advsuite.results import ResultsStore, config_hash, git_commit, package_versions, write_record
from advsuite.seeding import make_generator, seed_everything

# pool of extra test images searched for targeted starting points
STARTING_POOL = 2000


def choose_targets(y: torch.Tensor, num_classes: int, rule: str, seed: int) -> torch.Tensor:
    """Target classes different from the labels: seeded uniform (``random``) or ``(y + 1) % K`` (``next``)."""
    if rule == "next":
        return (y + 1) % num_classes
    if rule == "random":
        shift = torch.randint(1, num_classes, y.shape, generator=make_generator(seed))
        return (y + shift) % num_classes
    raise ConfigError(f"task.targeted_selection must be 'random' or 'next', got {rule!r}")


def starting_images(
    model: Classifier, data: DataBundle, targets: torch.Tensor, skip: int, seed: int, batch_size: int
) -> torch.Tensor:
    """For each target class, a test image (outside the attacked ones) the model classifies as it."""
    pool_x, _ = as_tensors(data.test, STARTING_POOL, start=skip)
    if len(pool_x) == 0:
        pool_x, _ = as_tensors(data.test, STARTING_POOL)
    pred = model.predict(pool_x, batch_size)
    gen = make_generator(seed + 1)
    starts = torch.empty(len(targets), *pool_x.shape[1:])
    for cls in targets.unique().tolist():
        members = (pred == cls).nonzero().squeeze(1)
        if len(members) == 0:
            raise ConfigError(f"no test image is classified as class {cls}: a targeted attack cannot start there")
        where = (targets == cls).nonzero().squeeze(1)
        pick = members[torch.randint(len(members), (len(where),), generator=gen)]
        starts[where] = pool_x[pick]
    return starts


def _run_dir(home: Path) -> Path:
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    stamp = datetime.now().strftime("%Y-%m-%d/%H-%M-%S-%f")
    return home / "runs" / stamp


def _names(cfg: DictConfig, attack: Attack | None, model: Classifier | None) -> dict[str, Any]:
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    eps = getattr(attack, "eps", None) if attack is not None and attack.fixed_epsilon else None
    if isinstance(eps, list | tuple):
        eps = max(eps)
    info = model.info if model is not None else {}
    return {
        "task": "evaluate",
        "dataset": choices.get("dataset") or str(cfg.dataset.get("_target_", "dataset")).rsplit(".", 1)[-1],
        "model": choices.get("model") or str(cfg.model.get("arch", "model")),
        "attack": choices.get("attack") or type(attack).__name__,
        "defense": str(cfg.defense.get("name", "none")),
        "threat_model": getattr(attack, "norm", None),
        "epsilon": None if eps is None else float(eps),
        "access": getattr(attack, "threat_model", None),
        "model_source": info.get("model_source", f"zoo:{cfg.model.get('arch', 'model')}"),
        "weights_hash": info.get("weights_hash"),
    }


def _artifacts(run_dir: Path, ev: Evaluation, attack_name: str, grid_images: int) -> dict[str, str | None]:
    artifacts: dict[str, str | None] = {"plot": None, "grid": None}
    if ev.epsilons is not None and ev.robust_by_eps is not None:
        plot_robust_accuracy(ev.epsilons, ev.robust_by_eps, run_dir / "robust_accuracy.png", title=attack_name)
        artifacts["plot"] = "robust_accuracy.png"
    elif any(len(t) for t in ev.traces):
        plot_distortion_vs_queries({attack_name: ev.traces}, run_dir / "distortion_vs_queries.png")
        artifacts["plot"] = "distortion_vs_queries.png"
    shown = ev.attacked.nonzero().squeeze(1)[:grid_images]
    if len(shown):
        save_image_grid(ev.x[shown], ev.x_adv[shown], run_dir / "examples.png", n=grid_images)
        artifacts["grid"] = "examples.png"
    return artifacts


def print_summary(names: dict[str, Any], metrics: dict[str, Any]) -> None:
    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    rows = [
        ("dataset / model", f"{names['dataset']} / {names['model']}"),
        ("attack", f"{names['attack']} ({names['access']}, {names['threat_model']})"),
        ("examples (attacked)", f"{metrics['n_examples']} ({metrics['n_attacked']})"),
        ("clean accuracy", fmt(metrics["clean_accuracy"])),
        ("robust accuracy", fmt(metrics["robust_accuracy"])),
        ("success rate", fmt(metrics["success_rate"])),
        ("median / mean L2", f"{fmt(metrics['median_l2'])} / {fmt(metrics['mean_l2'])}"),
        ("median / mean Linf", f"{fmt(metrics['median_linf'])} / {fmt(metrics['mean_linf'])}"),
        ("median / mean queries", f"{fmt(metrics['median_queries'])} / {fmt(metrics['mean_queries'])}"),
        ("flips on re-check", fmt(metrics["flips"])),
    ]
    if metrics.get("robust_accuracy_by_eps"):
        curve = ", ".join(f"{e}: {a:.3f}" for e, a in metrics["robust_accuracy_by_eps"].items())
        rows.insert(5, ("robust acc. by eps", curve))
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k.ljust(width)}  {v}" for k, v in rows))


def run_evaluate(cfg: DictConfig) -> dict[str, Any]:
    """The evaluate task; returns the record (also written to the run directory and indexed)."""
    started = time.time()
    home = advsuite_home(cfg.paths.home)
    config = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(config, dict)
    chash = config_hash(config)
    store = ResultsStore(home)
    if not cfg.redo:
        previous = store.finished(chash)
        if previous is not None:
            print(f"skipped: an identical configuration already finished in {previous['run_dir']} (redo=true to rerun)")
            return dict(previous)
    run_dir = _run_dir(home)
    run_dir.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "schema": 1,
        "run_id": uuid.uuid4().hex,
        "status": "failed",
        "error": None,
        "created": datetime.now(timezone.utc).isoformat(),
        "config": config,
        "config_hash": chash,
        "seed": int(cfg.seed),
        "versions": package_versions(),
        "git_commit": git_commit(),
        "run_dir": str(run_dir),
    }
    attack: Attack | None = None
    model: Classifier | None = None
    try:
        seed_everything(int(cfg.seed))
        device = resolve_device(cfg.device)
        data: DataBundle = instantiate(cfg.dataset)
        attack = instantiate(cfg.attack)
        if not isinstance(attack, Attack):
            raise ConfigError(f"attack config builds {type(attack).__name__}, not an advsuite Attack")
        model = load_model(
            cfg.model, data, recipe=cfg.train, device=device, seed=int(cfg.seed), verbose=bool(cfg.verbose)
        )
        x, y = as_tensors(data.test, int(cfg.n_samples))
        targets = starts = None
        if attack.targeted:
            targets = choose_targets(y, data.num_classes, cfg.task.targeted_selection, int(cfg.seed))
            if attack.threat_model == "label":
                starts = starting_images(model, data, targets, len(x), int(cfg.seed), int(cfg.batch_size))
        ev = evaluate(
            model,
            attack,
            x,
            y,
            targets=targets,
            starting_points=starts,
            batch_size=int(cfg.batch_size),
            verbose=bool(cfg.verbose),
        )
        names = _names(cfg, attack, model)
        record.update(
            status="finished",
            names=names,
            metrics=ev.metrics,
            per_sample={"index": list(range(len(x))), **ev.per_sample},
            artifacts=_artifacts(run_dir, ev, names["attack"], int(cfg.task.grid_images)),
        )
        print_summary(names, ev.metrics)
    except BaseException as exc:  # recorded as failed, then re-raised
        record.update(
            error=f"{type(exc).__name__}: {exc}", names=_names(cfg, attack, model), traceback=traceback.format_exc()
        )
        raise
    finally:
        record["duration_s"] = time.time() - started
        path = write_record(run_dir, record)
        store.index(record)
        print(f"record: {path}")
    return record

"""``task=backdoor``: poison the training set, train the victim (cached), record CA, ASR and RA.

The record's ``backdoor`` block names the poisoned model's cache key and entry; ``task=backdoor_defense
backdoor=<record, run id or key>`` consumes it. See docs/backdoor.md.
"""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from advsuite.data.bundle import sample_tensors
from advsuite.paths import advsuite_home
from advsuite.plots import save_image_grid
from advsuite.recording import open_recorder
from advsuite.seeding import seed_everything
from advsuite.validation import check_int

from .experiment import BackdoorStage, attack_label, attack_options, build_poison_attack, poison_stage
from .metrics import BackdoorMetrics, backdoor_metrics

TITLES = {
    "clean_accuracy": "CA",
    "asr": "ASR",
    "ra": "RA",
    "clean_model_accuracy": "clean model CA",
    "ca_drop": "CA drop",
}


def config_name(target: str) -> str:
    """The ``attack=`` config whose ``_target_`` is ``target`` (``lc`` for LabelConsistent), as the command line
    names it; outside a Hydra run (``advsuite.run``) the choice is not recorded, so it is looked up."""
    from advsuite.api import attack_names

    folder = importlib.resources.files("advsuite.conf") / "attack"
    for name in attack_names("poison"):
        node = OmegaConf.create((folder / f"{name}.yaml").read_text(encoding="utf-8"))
        if isinstance(node, DictConfig) and node.get("_target_") == target:
            return name
    return target.rsplit(".", 1)[-1].lower()


def check_backdoor_task(task: DictConfig) -> None:
    """``task.n_test``, ``task.snapshots`` and ``task.grid_images``, before anything loads."""
    if task.get("n_test") is not None:
        check_int("task", "n_test", task.get("n_test"), 1)
    for key in ("snapshots", "grid_images"):
        if key in task:
            check_int("task", key, task.get(key), 0)


def run_names(cfg: DictConfig, attack_name: str, task: str, defense: str = "none") -> dict[str, Any]:
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    return {
        "task": task,
        "dataset": str(cfg.dataset.get("name") or choices.get("dataset") or "dataset"),
        "model": choices.get("model") or str(cfg.model.get("name") or cfg.model.get("arch")),
        "attack": attack_name,
        "defense": defense,
        "access": "poison",
    }


def metrics_dict(m: BackdoorMetrics) -> dict[str, Any]:
    return {"clean_accuracy": m.clean_accuracy, "asr": m.asr, "ra": m.ra, "n_test": m.n_clean,
            "n_backdoor_test": m.n_backdoor}  # fmt: skip


def run_backdoor(cfg: DictConfig) -> dict[str, Any]:
    home = advsuite_home(cfg.paths.home)
    recorder, previous = open_recorder(cfg, home)
    if previous is not None:
        return previous
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    attack_name = str(choices.get("attack") or config_name(str(cfg.attack.get("_target_"))))
    with recorder:
        recorder.names = run_names(cfg, attack_name, "backdoor")
        check_backdoor_task(cfg.task)
        attack = build_poison_attack(cfg.attack, attack_name)
        seed_everything(int(cfg.seed))
        stage = poison_stage(cfg, attack, attack_name, clean_reference=bool(cfg.task.clean_reference),
                             snapshots=int(cfg.task.snapshots), verbose=bool(cfg.verbose))  # fmt: skip
        x, y = sample_tensors(stage.data.test, cfg.task.n_test, int(cfg.seed))
        k = stage.data.num_classes
        measured = backdoor_metrics(stage.model, attack, x, y, k, int(cfg.batch_size))
        metrics = metrics_dict(measured)
        if stage.clean_model is not None:
            clean = backdoor_metrics(stage.clean_model, attack, x, y, k, int(cfg.batch_size))
            metrics |= {"clean_model_accuracy": clean.clean_accuracy, "clean_model_asr": clean.asr,
                        "ca_drop": clean.clean_accuracy - measured.clean_accuracy}  # fmt: skip
        metrics |= {
            "n_poisoned": len(stage.poisoned.indices),
            "n_train": len(stage.train_indices),
            "poison_rate": attack.rate,
            "target": attack.target,
            "mode": attack.mode,
            "clean_label": attack.clean_label,
            "train_seconds": stage.meta.get("train_seconds"),
            "seconds_per_epoch": stage.meta.get("seconds_per_epoch"),
            "model_source": stage.model.info.get("source"),
        }
        recorder.names |= {"weights_hash": stage.meta.get("weights_hash"), "backdoor_key": stage.key,
                           "attack_label": attack_label(attack_name, attack)}  # fmt: skip
        recorder.record["backdoor"] = {"key": stage.key, "entry": str(stage.entry.path),
                                       "attack_options": attack_options(attack), "paper": attack.paper}  # fmt: skip
        artifacts = write_backdoor_artifacts(recorder.run_dir, stage, x, int(cfg.task.grid_images))
        recorder.finish_metrics(metrics, TITLES, artifacts)
        print(format_backdoor(recorder.names, metrics))
    print(f"record: {recorder.run_dir / 'record.json'}")
    return recorder.record


def write_backdoor_artifacts(run_dir: Path, stage: BackdoorStage, x: Any, grid_images: int) -> dict[str, str]:
    """The poison indices (of the training split) and a grid of clean vs triggered test images."""
    (run_dir / "poison_indices.json").write_text(json.dumps(stage.poison_dataset_indices.tolist()))
    artifacts = {"poison_indices": "poison_indices.json"}
    if grid_images and len(x):
        shown = x[:grid_images]
        save_image_grid(shown, stage.attack.trigger(shown), run_dir / "triggers.png", n=grid_images,
                        rows=("clean", "triggered", "trigger"))  # fmt: skip
        artifacts["grid"] = "triggers.png"
    return artifacts


def format_backdoor(names: dict[str, Any], metrics: dict[str, Any]) -> str:
    line = (f"{names['attack']} on {names['model']} / {names['dataset']} (defense: {names['defense']}): "
            f"CA {metrics['clean_accuracy']:.2%}, ASR {metrics['asr']:.2%}, RA {metrics['ra']:.2%}")  # fmt: skip
    if "clean_model_accuracy" in metrics:
        line += f" (clean model CA {metrics['clean_model_accuracy']:.2%})"
    if "der" in metrics:
        line += f", DER {metrics['der']:.3f}"
    return line

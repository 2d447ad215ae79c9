"""``task=backdoor_defense backdoor=<attack run> defense=<name>``: defend a ``task=backdoor`` run's poisoned model
and record CA, ASR and RA after, the attack run's numbers before (measured afresh on the same test images),
BackdoorBench's DER, and the detection metrics the defense's kind allows. See docs/backdoor.md.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from omegaconf import DictConfig

from advsuite.attacks.backdoor.experiment import BackdoorStage, find_backdoor_record, stage_from_record
from advsuite.attacks.backdoor.metrics import defense_effectiveness_rate, filtered_backdoor_metrics
from advsuite.attacks.backdoor.task import (
    TITLES,
    check_backdoor_task,
    format_backdoor,
    metrics_dict,
    run_names,
)
from advsuite.configs import to_plain
from advsuite.data.bundle import sample_tensors
from advsuite.detector import detection_metrics
from advsuite.errors import ConfigError
from advsuite.paths import advsuite_home
from advsuite.recording import open_recorder
from advsuite.seeding import derive_seed, seed_everything
from advsuite.validation import check_known_options

from .base import BackdoorDefense, DefenseContext, DefenseOutcome


def build_backdoor_defense(options: Any, choice: str | None) -> BackdoorDefense:
    """The backdoor defense of a ``defense=`` config, its options checked against its fields."""
    label = f"defense {choice}" if choice else "the defense config"
    plain = {k: v for k, v in dict(to_plain(options) or {}).items() if v is not None}  # null: the class's default
    target = plain.pop("_target_", None)
    plain.pop("name", None)
    try:
        cls = get_class(str(target)) if target else None
    except (ImportError, ValueError):  # e.g. defense=none: its _target_ is a function
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, BackdoorDefense)):
        raise ConfigError(f"{label} is not a backdoor defense: task=backdoor_defense takes defense=fine_tuning, "
                          "fine_pruning, neural_cleanse, strip, spectral or activation_clustering")  # fmt: skip
    valid = [f.name for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    check_known_options(plain, valid, label, " (set one with defense.<option>=<value>)")
    return cls(**plain)


def defense_context(stage: BackdoorStage, clean_share: float, seed: int) -> DefenseContext:
    """The defender's view: the training set as trained on, and ``clean_share`` of it drawn from the samples the
    attack left untouched (not the poison, nor the samples an attack changed otherwise, e.g. WaNet's noise mode)."""
    n = len(stage.poisoned.y)
    pool = (~stage.poisoned.modified).nonzero().flatten()
    gen = torch.Generator().manual_seed(derive_seed(seed, "clean reserve"))
    reserve = pool[torch.randperm(len(pool), generator=gen)[: max(2, round(clean_share * n))]]
    return DefenseContext(
        model=stage.model,
        train_x=stage.poisoned.x,
        train_y=stage.poisoned.y,
        clean_x=stage.poisoned.x[reserve],
        clean_y=stage.poisoned.y[reserve],
        num_classes=stage.data.num_classes,
        retrain=stage.retrain,
        seed=seed,
        verbose=stage.verbose,
    )


def detection(stage: BackdoorStage, outcome: DefenseOutcome, clean_scores: Any, bd_scores: Any) -> dict[str, Any]:
    """Input-level AUROC and TPR at 5% FPR (clean vs triggered test images), sample-level ones (poison vs clean
    training samples) with the removed set's recall and precision, and Neural Cleanse's verdict on the target."""
    out: dict[str, Any] = {}
    if clean_scores is not None and bd_scores is not None:
        m = detection_metrics(clean_scores, bd_scores)
        out |= {"detection_auroc": m["auroc"], "detection_tpr": m["tpr_at_fpr"], "detection_fpr": m["fpr"]}
    if outcome.sample_scores is not None:
        poison = torch.zeros(len(outcome.sample_scores), dtype=torch.bool)
        poison[stage.poisoned.indices] = True
        m = detection_metrics(outcome.sample_scores[~poison], outcome.sample_scores[poison])
        out |= {"detection_auroc": m["auroc"], "detection_tpr": m["tpr_at_fpr"], "detection_fpr": m["fpr"]}
        if outcome.removed is not None:
            hit = int(poison[outcome.removed].sum())
            out |= {"removed": len(outcome.removed), "removed_poison_recall": hit / max(1, int(poison.sum())),
                    "removed_precision": hit / max(1, len(outcome.removed))}  # fmt: skip
    flagged = outcome.details.get("flagged_classes")
    if flagged is not None and stage.attack.mode == "all_to_one":
        out |= {"target_flagged": stage.attack.target in flagged,
                "target_anomaly_index": outcome.details["anomaly_index"][stage.attack.target]}  # fmt: skip
    return out


def run_backdoor_defense(cfg: DictConfig) -> dict[str, Any]:
    home = advsuite_home(cfg.paths.home)
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    defense_name = str(choices.get("defense") or cfg.defense.get("name") or "defense")
    # options and the attack run first: a refusal costs nothing, and the run's identity is the attack run it defends
    check_backdoor_task(cfg.task)
    share = cfg.task.clean_share
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share < 1:
        raise ConfigError(f"task.clean_share must be in (0, 1) (the defender's clean share of the training set), "
                          f"got {share!r}")  # fmt: skip
    defense = build_backdoor_defense(cfg.defense, defense_name)
    names = run_names(cfg, "unknown", "backdoor_defense", defense_name)
    attack_record = find_backdoor_record(cfg.get("backdoor"), home, names["dataset"], names["model"],
                                         train=cfg.get("train"), seed=cfg.get("seed"))  # fmt: skip
    # keyed by the attack run it resolves to: a rerun attack gets a new defense run, not a skip
    recorder, previous = open_recorder(cfg, home, backdoor_run=attack_record["run_id"])
    if previous is not None:
        return previous
    with recorder:
        attack_names = attack_record["names"]
        recorder.names = {**names, "attack": attack_names["attack"], "dataset": attack_names["dataset"],
                          "model": attack_names["model"], "weights_hash": attack_names.get("weights_hash"),
                          "backdoor_key": attack_names.get("backdoor_key"),
                          "attack_label": attack_names.get("attack_label")}  # fmt: skip
        seed = int(cfg.seed)
        seed_everything(seed)
        stage = stage_from_record(attack_record, str(home), verbose=bool(cfg.verbose))
        x, y = sample_tensors(stage.data.test, cfg.task.n_test, seed)
        k, batch = stage.data.num_classes, int(cfg.batch_size)
        before, _, _ = filtered_backdoor_metrics(stage.model, stage.attack, x, y, k, batch)
        started = time.perf_counter()
        outcome = defense.apply(defense_context(stage, float(share), seed))
        seconds = time.perf_counter() - started
        after, clean_scores, bd_scores = filtered_backdoor_metrics(outcome.model, stage.attack, x, y, k, batch,
                                                                   outcome.input_score, outcome.threshold)  # fmt: skip
        counts = ("n_test", "n_backdoor_test")
        metrics = metrics_dict(after) | {f"before_{k}": v for k, v in metrics_dict(before).items() if k not in counts}
        metrics |= {"der": defense_effectiveness_rate(before, after), "defense_seconds": round(seconds, 2),
                    "defense_kind": defense.kind}  # fmt: skip
        metrics |= detection(stage, outcome, clean_scores, bd_scores)
        metrics |= {f"defense_{key}": value for key, value in outcome.details.items()}
        recorder.record["backdoor"] = {"attack_run": attack_record["run_id"], "key": stage.key,
                                       "attack_record": str(Path(attack_record["run_dir"]) / "record.json"),
                                       "paper": defense.paper}  # fmt: skip
        recorder.finish_metrics(metrics, {**TITLES, "der": "DER", "detection_auroc": "detection AUROC"}, {})
        print(format_backdoor(recorder.names, metrics))
    print(f"record: {recorder.run_dir / 'record.json'}")
    return recorder.record

"""``task=audit``: an adaptive-attack audit of the model behind ``defense=``; a report next to the record.

    python -m advsuite task=audit defense=jpeg task.eps=0.3
    python -m advsuite task=audit dataset=cifar10_npz model=convnet defense=gaussian_noise task.eps=0.0314 \\
        task.eot_iter=20 task.surrogate=smallcnn

The battery, the checks and the verdict are :func:`advsuite.audit`'s. Finished stages are kept under
``$ADVSUITE_HOME/audits/<config hash>``, so a killed audit, run again with the same command, resumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from advsuite.data import DataBundle, as_tensors
from advsuite.device import resolve_device
from advsuite.models.surrogates import reference_spec
from advsuite.models.zoo import load_model
from advsuite.paths import advsuite_home
from advsuite.recording import RunRecorder, run_names
from advsuite.seeding import seed_everything
from advsuite.tasks.evaluate import warn_if_unmixed
from advsuite.tasks.options import build_run_defense
from advsuite.validation import check_choice, check_int, check_number

from . import Settings, audit

SETTINGS = ("norm", "eps", "steps", "eot_iter", "n_target_classes", "square_queries", "decision_budget",
            "random_samples", "long_factor")  # fmt: skip


def audit_settings(cfg: DictConfig) -> Settings:
    """The battery's settings from ``cfg.task``, checked before anything loads."""
    t = cfg.task  # unknown keys were refused by check_run_options
    check_choice("task audit", "norm", t.norm, ("linf", "l2"))
    check_number("task audit", "eps", t.eps)
    for key in SETTINGS[2:]:
        check_int("task audit", key, t[key], 1)
    values = {k: t[k] for k in SETTINGS}
    return Settings(**values, seed=int(cfg.seed), batch_size=int(cfg.batch_size))


def run_audit(cfg: DictConfig) -> dict[str, Any]:
    home = advsuite_home(cfg.paths.home)
    config = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))
    hydra_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None
    recorder = RunRecorder(config, home=home, run_dir=hydra_dir, seed=cfg.get("seed"))
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    with recorder:
        settings = audit_settings(cfg)
        defense = build_run_defense(cfg, choices.get("defense"))
        names = run_names(dataset=str(cfg.dataset.get("name") or choices.get("dataset") or "dataset"),
                          model_name=choices.get("model") or str(cfg.model.get("arch", "model")), attack_name="audit",
                          attack=None, model=None, defense=defense.name if defense is not None else "none")  # fmt: skip
        names |= {"task": "audit", "norm": settings.norm, "epsilon": settings.eps, "access": "whitebox",
                  "targeted": False}  # fmt: skip
        recorder.names = names
        seed_everything(int(cfg.seed))
        device = resolve_device(cfg.device)
        data: DataBundle = instantiate(cfg.dataset)
        zoo: dict[str, Any] = {"device": device, "cache_dir": home / "zoo", "seed": int(cfg.seed),
                               "verbose": bool(cfg.verbose)}  # fmt: skip
        model = load_model(cfg.model, data, recipe=cfg.train, **zoo)
        surrogate = None
        if cfg.task.surrogate:
            surrogate = load_model(reference_spec(cfg.task.surrogate), data, **zoo)
        x, y = as_tensors(data.test, int(cfg.n_samples))
        warn_if_unmixed(y, data.num_classes, data.name)
        report = audit(model, x, y, defense=defense, settings=settings, surrogate=surrogate,
                       state_dir=home / "audits" / recorder.record["config_hash"], title=f"{names['model']} + "
                       f"{names['defense']} on {names['dataset']}", verbose=bool(cfg.verbose))  # fmt: skip
        artifacts = report.write(recorder.run_dir)
        summary = report.summary()
        metrics = {
            "clean_accuracy": summary["clean_accuracy"],
            # an image counts as robust only if every attack of the battery failed on it (as AutoAttack's cascade)
            "robust_accuracy": summary["combined_robust_accuracy"],
            "n_examples": len(x),
            "n_attacked": report.n,
            "audit_flags": len(summary["flags"]),
            **summary,
        }
        recorder.finish_metrics(metrics, {}, artifacts)  # the leaderboard has its own audit columns
        print(report.verdict)
    print(f"report: {recorder.run_dir / 'audit.md'}")
    return recorder.record

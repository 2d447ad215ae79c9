"""``task=evaluate``: attack ``n_samples`` test images, re-check, plot and record the run."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from advsuite.attack import Attack, PrepareContext
from advsuite.data import DataBundle, as_tensors
from advsuite.defense import Defense, defend
from advsuite.detector import Detector, detection_step
from advsuite.device import resolve_device
from advsuite.errors import ConfigError
from advsuite.evaluation import evaluate
from advsuite.models.classifier import Classifier
from advsuite.models.zoo import load_model
from advsuite.paths import advsuite_home
from advsuite.recording import format_summary, open_recorder, run_names, write_artifacts
from advsuite.seeding import make_generator, seed_everything
from advsuite.tasks.options import build_run_attack, build_run_defense, build_run_detector, check_run_options

# extra test images searched for targeted starting points
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
    """For each target, a test image (outside the attacked ones if possible) the model classifies as it."""
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
        starts[where] = pool_x[members[torch.randint(len(members), (len(where),), generator=gen)]]
    return starts


def warn_if_unmixed(y: torch.Tensor, num_classes: int, dataset: str) -> None:
    """Say so when the attacked images cover fewer classes than they could (a split stored class by class)."""
    covered, could = len(y.unique()), min(len(y), num_classes)
    if covered < could:
        warnings.warn(
            f"the {len(y)} images attacked cover only {covered} of {num_classes} classes of {dataset}: the numbers "
            "describe those classes only. Is the test split stored class by class? (npz and imagefolder datasets: "
            "set dataset.shuffle_seed to an integer)",
            RuntimeWarning,
            stacklevel=2,
        )


def note_randomized_without_eot(defense: Defense | None, attack: Attack, metrics: dict[str, Any]) -> None:
    """A randomized defense attacked without EOT: warn, and say so in the record's metrics."""
    if defense is not None and defense.randomized and int(getattr(attack, "eot_iter", 1)) <= 1:
        warnings.warn(f"defense {defense.name} is randomized and the attack averages no gradients over it (EOT): "
                      "the robust accuracy may be overstated; audit it (task=audit task.eot_iter=20) or use an "
                      "attack with eot_iter", RuntimeWarning, stacklevel=2)  # fmt: skip
        metrics["randomized_defense_without_eot"] = True


def run_evaluate(cfg: DictConfig) -> dict[str, Any]:
    """The evaluate task; returns the record (also written to the run directory and indexed)."""
    home = advsuite_home(cfg.paths.home)
    recorder, previous = open_recorder(cfg, home)
    if previous is not None:
        return previous
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    attack: Attack | None = None
    model: Classifier | None = None
    defense: Defense | None = None
    detector: Detector | None = None

    def names() -> dict[str, Any]:
        return run_names(
            dataset=str(cfg.dataset.get("name") or choices.get("dataset") or "dataset"),
            model_name=choices.get("model") or str(cfg.model.get("arch", "model")),
            attack_name=choices.get("attack") or type(attack).__name__,
            attack=attack,
            model=model,
            defense=defense.name if defense is not None else str(cfg.defense.get("name", "none")),
            detector=detector.name if detector is not None else str((cfg.get("detector") or {}).get("name", "none")),
        )

    with recorder:
        recorder.names = names()  # so that a refused run's record says what it was
        # every option is checked before data, model or attack artifacts load
        check_run_options(cfg)
        defense = build_run_defense(cfg, choices.get("defense"))
        attack = build_run_attack(cfg, choices.get("attack"))
        build_detector = build_run_detector(cfg, choices.get("detector"))
        recorder.names = names()
        seed_everything(int(cfg.seed))
        device = resolve_device(cfg.device)
        data: DataBundle = instantiate(cfg.dataset)
        model = load_model(
            cfg.model,
            data,
            recipe=cfg.train,  # `train.force` is for task=train; the zoo ignores it here
            device=device,
            cache_dir=home / "zoo",
            seed=int(cfg.seed),
            verbose=bool(cfg.verbose),
        )
        model = defend(model, defense)  # attacks, oracles and the re-check all see the defended model
        detector = build_detector(model)
        recorder.names = names()
        attack.prepare(
            PrepareContext(
                data=data,
                device=model.device,
                cache_dir=home / "zoo",
                seed=int(cfg.seed),
                verbose=bool(cfg.verbose),
                victim_arch=str(model.info.get("arch")) if model.info.get("arch") else None,
            )
        )
        x, y = as_tensors(data.test, int(cfg.n_samples))
        warn_if_unmixed(y, data.num_classes, data.name)
        targets = starts = None
        if attack.targeted:
            targets = choose_targets(y, data.num_classes, cfg.task.targeted_selection, int(cfg.seed))
            if attack.access == "label":
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
            budgets=[int(b) for b in cfg.task.budgets],
            mse_threshold=cfg.task.mse_threshold,
            l2_threshold=cfg.task.l2_threshold,
        )
        note_randomized_without_eot(defense, attack, ev.metrics)
        if detector is not None:
            success = torch.tensor(ev.per_sample["success"], dtype=torch.bool)
            ev.metrics.update(detection_step(detector, data.train, ev.x, ev.x_adv, ev.attacked, success, int(cfg.seed)))
        artifacts = write_artifacts(recorder.run_dir, ev, recorder.names["attack"], int(cfg.task.grid_images))
        recorder.finish(ev, artifacts)
        print(format_summary(recorder.names, ev.metrics, ev.metric_titles))
    print(f"record: {recorder.run_dir / 'record.json'}")
    return recorder.record

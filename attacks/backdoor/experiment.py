"""A backdoor experiment's first stage: poison the training set, train the victim with the zoo's recipe, cache it.

The poisoned model is an artifact-cache entry (section ``backdoor``) keyed by the clean zoo key (architecture,
recipe, seed, dataset), the attack and its options, and for attacks that poison with a clean model that model's
weights. The entry holds the final weights, ``snapshots`` evenly spaced epoch snapshots (with their learning
rates, for TracIn-style influence) and the poison indices; ``meta.json`` is written last, so a training killed
before it leaves an entry that is never used: the next run retrains it. The same function rebuilds the stage
for ``task=backdoor_defense`` and ``task=backdoor_identify`` from the attack record's config (a cache hit).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import TensorDataset

from advsuite.artifacts import Entry, content_key
from advsuite.configs import to_plain
from advsuite.data.bundle import DataBundle, as_tensors
from advsuite.device import resolve_device
from advsuite.errors import CheckpointError, ConfigError
from advsuite.models.checkpoints import apply_state, network_state
from advsuite.models.classifier import Classifier
from advsuite.models.zoo import build_untrained, cache_key, load_model, parse_spec, versions
from advsuite.results.store import ResultsStore
from advsuite.seeding import derive_seed, make_generator
from advsuite.training import Recipe, subset_indices, train_classifier
from advsuite.validation import check_known_options

from .base import PoisonAttack, Poisoned

SECTION = "backdoor"
RECORD_HINT = ("a task=backdoor run: its record.json or run directory, its run id, its model key, or an attack name "
               "such as badnets (that attack's latest run on this dataset, model, recipe and seed)")  # fmt: skip
WEIGHTS_FILE = "model.safetensors"


@dataclass
class Snapshot:
    """The weights after ``epoch`` and the learning rate they were trained with."""

    epoch: int
    lr: float
    state: dict[str, torch.Tensor]


@dataclass
class BackdoorStage:
    """What the first stage produced: the poisoned training set (``train_indices``: which images of the training
    split, in order; ``poisoned.indices`` index into them) and the model trained on it."""

    data: DataBundle
    attack: PoisonAttack
    attack_name: str
    recipe: Recipe
    train_indices: torch.Tensor
    poisoned: Poisoned
    model: Classifier
    snapshots: list[Snapshot]
    clean_model: Classifier | None
    key: str
    entry: Entry
    meta: dict[str, Any]
    parsed: dict[str, Any]
    seed: int
    device: torch.device
    verbose: bool = True

    def retrain(self, keep: torch.Tensor) -> Classifier:
        """A fresh model (same initial weights) trained with the recipe on the training samples at ``keep``."""
        model, _ = build_untrained(self.parsed, self.data, self.seed)
        bundle = dataclasses.replace(self.data, train=TensorDataset(self.poisoned.x[keep], self.poisoned.y[keep]))
        whole = Recipe.coerce({**self.recipe.to_dict(), "train_subset": None})
        train_classifier(model, bundle, whole, device=self.device, seed=self.seed, verbose=self.verbose)
        model.info = {**self.model.info, "source": "retrained", "n_train": len(keep)}
        return model.eval()

    @property
    def poison_dataset_indices(self) -> torch.Tensor:
        """The poisoned samples as indices of the dataset's training split."""
        return self.train_indices[self.poisoned.indices]


def build_poison_attack(options: Any, choice: str | None = None) -> PoisonAttack:
    """The poisoning attack of an ``attack=`` config, its options checked against its fields."""
    label = f"attack {choice}" if choice else "the attack config"
    plain = to_plain(options)
    if not isinstance(plain, dict) or "_target_" not in plain:
        raise ConfigError(f"{label} has no _target_ (e.g. advsuite.attacks.backdoor.BadNets)")
    plain = {k: v for k, v in plain.items() if v is not None}  # null: the class's default
    target = str(plain.pop("_target_"))
    try:
        cls = get_class(target)
    except Exception as exc:  # Hydra raises ImportError or ValueError subclasses
        raise ConfigError(f"{label}: cannot import its _target_ {target!r} ({exc})") from exc
    if not (isinstance(cls, type) and issubclass(cls, PoisonAttack)):
        raise ConfigError(f"{label} is not a poisoning attack: task=backdoor takes attack=badnets, blended, wanet, "
                          "sig or lc (evasion attacks run with task=evaluate)")  # fmt: skip
    valid = [f.name for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")]
    check_known_options(plain, valid, label, " (set one with attack.<option>=<value>)")
    return cls(**plain)


def attack_options(attack: PoisonAttack) -> dict[str, Any]:
    """The attack's options as recorded and hashed."""
    fields = dataclasses.fields(attack)
    return {f.name: getattr(attack, f.name) for f in fields if f.init and not f.name.startswith("_")}


def attack_label(name: str, attack: PoisonAttack) -> str:
    """The attack's name with the options that differ from its class's defaults (``badnets (rate=0.05)``)."""
    changed = [f"{f.name}={getattr(attack, f.name)}" for f in dataclasses.fields(attack)
               if f.init and not f.name.startswith("_") and getattr(attack, f.name) != f.default]  # fmt: skip
    return f"{name} ({', '.join(changed)})" if changed else name


def check_victim(spec: Any, recipe: Recipe) -> dict[str, Any]:
    """The parsed model spec, refused where the victim would not be trained on the poisoned set."""
    parsed = parse_spec(spec)
    if parsed["checkpoint"]:
        raise ConfigError("model.checkpoint is set, but task=backdoor trains the victim on the poisoned training "
                          "set; leave model.checkpoint empty")  # fmt: skip
    if parsed["hub"]:
        raise ConfigError("model.hub=true is not supported by task=backdoor yet (it trains from scratch); "
                          "set model.hub=false")  # fmt: skip
    if getattr(recipe, "trainer", "standard") != "standard":
        raise ConfigError("task=backdoor trains with the standard trainer; train=dat is not supported here")
    return parsed


def snapshot_epochs(epochs: int, count: int) -> list[int]:
    """``count`` epochs spread evenly over training, ending with the last."""
    count = max(0, min(count, epochs))
    return sorted({round(epochs * (i + 1) / count) for i in range(count)}) if count else []


def poison_stage(
    cfg: DictConfig,
    attack: PoisonAttack,
    attack_name: str,
    *,
    clean_reference: bool,
    snapshots: int,
    verbose: bool = True,
) -> BackdoorStage:
    """Poison, then load the poisoned model from the cache or train it (see the module docstring)."""
    seed = int(cfg.seed)
    home = Path(str(cfg.paths.home)).expanduser()
    cache_dir = home / "zoo"
    device = resolve_device(cfg.get("device", "auto"))
    spec = to_plain(cfg.model)
    recipe = Recipe.coerce(to_plain(cfg.train), parse_spec(spec)["recipe_overrides"])
    parsed = check_victim(spec, recipe)
    data: DataBundle = instantiate(cfg.dataset)
    attack.check(tuple(data.input_shape), data.num_classes)

    x, y = as_tensors(data.train)
    chosen = subset_indices(len(x), recipe.train_subset, seed)
    train_indices = chosen if chosen is not None else torch.arange(len(x))
    x, y = x[train_indices], y[train_indices]
    if attack.mode == "all_to_one" and not attack.clean_label and bool((y == attack.target).all()):
        raise ConfigError(f"{attack_name}: every training image is of the target class {attack.target}; an "
                          "all-to-one attack needs images of other classes to poison")  # fmt: skip

    clean = None
    if clean_reference or attack.needs_clean_model:
        clean = load_model(spec, data, recipe=recipe, device=device, cache_dir=cache_dir, seed=seed, verbose=verbose)
        attack.attach_clean_model(clean)
    kind = type(attack).__name__.lower()  # the poison and the entry follow the class, not the config's name
    poisoned = attack.poison(x, y, data.num_classes, make_generator(derive_seed(seed, "poison", kind)))

    model, base_info = build_untrained(parsed, data, seed)
    zoo_key = cache_key(parsed, data, recipe, base_info["adaptation"], seed)
    epochs = snapshot_epochs(recipe.epochs, snapshots)
    blob = {
        "zoo_key": zoo_key,
        "attack": type(attack).__name__,
        "options": attack_options(attack),
        "snapshot_epochs": epochs,
        "snapshot_lr": "mean since the previous snapshot",
        "surrogate": clean.info.get("weights_hash") if attack.needs_clean_model and clean is not None else None,
    }
    key = content_key(blob)
    entry = Entry.at(cache_dir, SECTION, data.name, f"{parsed['arch']}-{kind}-{key}",
                     weights_file=WEIGHTS_FILE, what="poisoned model")  # fmt: skip

    def restore(meta: dict[str, Any], state: dict[str, torch.Tensor]) -> tuple[dict[str, Any], list[Snapshot]]:
        if "poison_indices" not in state or "snapshot_lrs" not in meta:
            raise CheckpointError("it lacks the poison indices or the snapshots' learning rates")
        if not torch.equal(state["poison_indices"], poisoned.indices):
            raise CheckpointError("its poison indices differ from this run's poisoning")
        apply_state(model, _prefixed(state, "final."), entry.weights)
        kept = [Snapshot(e, float(lr), _prefixed(state, f"epoch{e}.")) for e, lr in meta["snapshot_lrs"]]
        return meta, kept

    loaded = entry.load(restore)
    if loaded is not None:
        meta, kept = loaded
        model.to(device).eval()
        model.info = {**base_info, **meta, "source": "cache", "path": str(entry.weights)}
    else:
        meta, kept = _train(model, data, recipe, poisoned, epochs, device, seed, verbose)
        meta = {**base_info, **meta, "recipe": recipe.to_dict(), "zoo_key": zoo_key, "key": key,
                "attack": type(attack).__name__, "options": attack_options(attack), "versions": versions()}  # fmt: skip
        state = {f"final.{k}": v for k, v in network_state(model).items()}
        for snap in kept:
            state.update({f"epoch{snap.epoch}.{k}": v for k, v in snap.state.items()})
        state["poison_indices"] = poisoned.indices
        meta = entry.store(state, meta)
        model.info = {**meta, "source": "trained", "path": str(entry.weights)}
    return BackdoorStage(data, attack, attack_name, recipe, train_indices, poisoned, model, kept, clean, key, entry,
                         meta, parsed, seed, device, verbose)  # fmt: skip


def _prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _train(
    model: Classifier,
    data: DataBundle,
    recipe: Recipe,
    poisoned: Poisoned,
    epochs: list[int],
    device: torch.device,
    seed: int,
    verbose: bool,
) -> tuple[dict[str, Any], list[Snapshot]]:
    """Train on the poisoned set (the subset is already drawn) and keep the snapshots."""
    bundle = dataclasses.replace(data, train=TensorDataset(poisoned.x, poisoned.y))
    kept: list[Snapshot] = []
    rates: list[float] = []

    def snap(epoch: int, net: torch.nn.Module, lr: float) -> None:
        rates.append(lr)
        if epoch in epochs:  # weighted by the mean learning rate since the previous snapshot (TracInCP's η)
            mean = sum(rates) / len(rates)
            rates.clear()
            kept.append(Snapshot(epoch, mean, {k: v.detach().cpu().clone() for k, v in network_state(model).items()}))

    whole = Recipe.coerce({**recipe.to_dict(), "train_subset": None})
    metrics = train_classifier(model, bundle, whole, device=device, seed=seed, verbose=verbose, on_epoch=snap)
    meta = {
        "clean_accuracy": metrics["test_accuracy"],
        "clean_accuracy_n": metrics["n_test"],
        "train_seconds": metrics["train_seconds"],
        "seconds_per_epoch": metrics["train_seconds"] / max(1, recipe.epochs),
        "train_metrics": metrics,
        "snapshot_lrs": [[s.epoch, s.lr] for s in kept],
        "n_poisoned": len(poisoned.indices),
    }
    return meta, kept


def stage_from_record(record: dict[str, Any], home: str, *, verbose: bool = True) -> BackdoorStage:
    """Rebuild a finished ``task=backdoor`` run's stage from its record (the model comes from the cache)."""
    config = OmegaConf.create(record["config"])
    config.paths.home = home
    names = record.get("names") or {}
    attack = build_poison_attack(config.attack, names.get("attack"))
    task = config.task
    return poison_stage(config, attack, str(names.get("attack")), clean_reference=False,
                        snapshots=int(task.get("snapshots", 0)), verbose=verbose)  # fmt: skip


def find_backdoor_record(
    value: Any,
    home: Path,
    dataset: str,
    model: str,
    *,
    train: Any = None,
    seed: Any = None,
    task: str = "backdoor_defense",
) -> dict[str, Any]:
    """The finished ``task=backdoor`` record ``value`` names (see :data:`RECORD_HINT`); one line when it is not one.
    An attack name matches that attack's latest run with this ``dataset``, ``model``, ``train`` recipe and ``seed``."""
    if value in (None, ""):
        raise ConfigError(f"task={task} needs backdoor=<{RECORD_HINT}>")
    text = str(value)
    path = Path(text).expanduser()
    record: dict[str, Any] | None = None
    if path.is_dir():
        path = path / "record.json"
    if path.is_file():
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"backdoor={text}: cannot read the record ({exc})") from exc
    else:
        store = ResultsStore(home)
        everything = store.records(status=None)
        record = next((r for r in everything if r.get("run_id") == text), None)
        if record is None:
            backdoor = [r for r in everything if (r.get("names") or {}).get("task") == "backdoor"
                        and r.get("status") == "finished"]  # fmt: skip
            by_key = [r for r in backdoor if (r.get("names") or {}).get("backdoor_key") == text]
            by_attack = [r for r in backdoor if (r.get("names") or {}).get("attack") == text
                         and r["names"].get("dataset") == dataset and r["names"].get("model") == model]  # fmt: skip
            same = [r for r in by_attack if (train is None or r["config"].get("train") == to_plain(train))
                    and (seed is None or r["config"].get("seed") == seed)]  # fmt: skip
            if by_attack and not same and not by_key:
                raise ConfigError(f"backdoor={text}: its runs on {dataset}/{model} used another recipe (train=) or "
                                  "seed; give the same train.* and seed options, or the run id")  # fmt: skip
            found = by_key or same
            record = found[-1] if found else None
    if record is None:
        raise ConfigError(f"backdoor={text}: no such record, run id, key or attack run on {dataset}/{model} in "
                          f"{home}; give {RECORD_HINT}")  # fmt: skip
    names = record.get("names") or {}
    kind = names.get("task") or (record.get("config") or {}).get("task", {}).get("name")
    if kind != "backdoor":
        raise ConfigError(
            f"backdoor={text} is a task={kind} record (attack {names.get('attack')} on "
            f"{names.get('model')} / {names.get('dataset')}), not a backdoor record; give {RECORD_HINT}"
        )
    if record.get("status") != "finished":
        raise ConfigError(f"backdoor={text} is a {record.get('status')} backdoor run ({record.get('error')}); "
                          "rerun it first")  # fmt: skip
    return record

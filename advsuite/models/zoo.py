"""The model zoo: a :class:`Classifier` for (arch, dataset, recipe), from wherever its weights are.

Resolution order (first that applies wins):

1. ``spec.checkpoint``: an explicit file (safetensors or a torch state_dict); errors are fatal.
2. the local zoo cache ``<cache_dir>/<dataset>/<arch>-<key>/`` where ``key`` hashes the recipe (with the
   model's ``recipe_overrides`` merged in), the resolved architecture adaptation, the seed and the dataset's
   shape; a corrupt entry is discarded with a warning.
3. hub weights, only when ``spec.hub`` is true (ImageNet weights via torchvision/timm; offline ->
   :class:`OfflineError`); with a new head they are fine-tuned with the recipe.
4. training on demand with the recipe; the result is evaluated and cached.

Entries live in the artifact cache (:mod:`advsuite.artifacts`): weights first, then ``meta.json`` as the
commit marker, verified against their hash on every load.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from advsuite.artifacts import Entry
from advsuite.configs import to_plain
from advsuite.data.bundle import DataBundle
from advsuite.device import resolve_device
from advsuite.errors import CheckpointError, ConfigError, OfflineError
from advsuite.models.archs import build_classifier, get_arch, hub_net
from advsuite.models.checkpoints import apply_state, checkpoint_header, load_weights, network_state, weights_hash
from advsuite.models.classifier import Classifier
from advsuite.models.custom import CUSTOM, build_custom_classifier, resolve_import_path
from advsuite.training import Recipe, evaluate_accuracy, train_classifier

log = logging.getLogger(__name__)

SPEC_KEYS = ("name", "arch", "checkpoint", "hub", "kwargs", "recipe_overrides", "amp", "target", "mean", "std")
WEIGHTS_FILE = "model.safetensors"
#: checkpoints are sanity-checked on at most this many test images (a wrong normalisation shows at once)
CHECKPOINT_EVAL_LIMIT = 2000


def parse_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Check a model spec (``conf/model/<name>.yaml``) and fill in defaults."""
    spec = dict(to_plain(spec))
    unknown = sorted(set(spec) - set(SPEC_KEYS) - {"_target_"})
    if unknown:
        raise ConfigError(f"unknown model config keys {unknown}; valid keys: {', '.join(SPEC_KEYS)}")
    if not spec.get("arch"):
        raise ConfigError("the model config needs an `arch` (e.g. model=smallcnn or model.arch=resnet50)")
    if spec["arch"] == CUSTOM:
        resolve_import_path(spec.get("target") or "")
    else:
        get_arch(spec["arch"])
    out = {
        "arch": str(spec["arch"]),
        "name": str(spec.get("target") or spec.get("name") or spec["arch"])
        if spec["arch"] == CUSTOM
        else str(spec.get("name") or spec["arch"]),
        "target": spec.get("target") or None,
        "mean": spec.get("mean"),
        "std": spec.get("std"),
        "checkpoint": spec.get("checkpoint") or None,
        "hub": bool(spec.get("hub", False)),
        "kwargs": dict(spec.get("kwargs") or {}),
        "recipe_overrides": dict(spec.get("recipe_overrides") or {}),
        "amp": bool(spec.get("amp", False)),
    }
    return out


def versions() -> dict[str, str]:
    """Versions recorded with every trained model (weights are only comparable across equal versions)."""
    out: dict[str, str] = {"torch": str(torch.__version__)}
    for package in ("torchvision", "timm", "advsuite", "safetensors"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = "unknown"
    return out


def cache_key(
    spec: Mapping[str, Any], data: DataBundle, recipe: Recipe, adaptation: Mapping[str, Any], seed: int
) -> str:
    """The hash naming a cache entry: recipe + resolved adaptation (arch kwargs) + hub + seed + dataset."""
    extra = {
        "arch": spec["arch"],
        "adaptation": dict(adaptation),  # includes the kwargs with the builder's defaults filled in
        "hub": spec["hub"],
        "seed": int(seed),
        "dataset": {
            "name": data.name,
            "input_shape": list(data.input_shape),
            "num_classes": data.num_classes,
            "n_train": len(data.train),  # type: ignore[arg-type]
            "mean": list(data.mean),
            "std": list(data.std),
            # splits drawn from a larger set (face identities) say which images they hold
            **({"fingerprint": data.info["fingerprint"]} if "fingerprint" in data.info else {}),
        },
    }
    return recipe.digest(extra)


def zoo_entry(cache_dir: str | os.PathLike[str] | None, data: DataBundle, arch: str, key: str) -> Entry:
    """The artifact-cache entry ``<cache root>/<dataset>/<arch>-<key>``."""
    return Entry.at(cache_dir, "", data.name, f"{arch}-{key}", weights_file=WEIGHTS_FILE, what="zoo model")


def load_model(
    spec: Mapping[str, Any],
    data: DataBundle,
    *,
    recipe: Recipe | Mapping[str, Any] | None = None,
    device: torch.device | str = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    verbose: bool = True,
    force_train: bool = False,
) -> Classifier:
    """A ready :class:`Classifier` (eval mode, on ``device``) for ``spec`` on ``data``; see the module docstring.

    ``force_train`` skips the cache (and hub) and retrains, replacing the cache entry. ``classifier.info`` holds
    the provenance: source (checkpoint|cache|hub|trained), path, weights_hash, clean_accuracy, recipe, arch,
    dataset, cache key.
    """
    parsed = parse_spec(spec)
    merged = Recipe.coerce(to_plain(recipe), parsed["recipe_overrides"])
    dev = resolve_device(device)
    model, base_info = build_untrained(parsed, data, seed)
    if parsed["checkpoint"]:
        return _from_checkpoint(model, Path(str(parsed["checkpoint"])).expanduser(), base_info, data, dev, seed)
    key = cache_key(parsed, data, merged, base_info["adaptation"], seed)
    entry = zoo_entry(cache_dir, data, parsed["arch"], key)
    base_info.update(recipe=merged.to_dict(), cache_key=key)
    if not force_train and (cached := entry.load(lambda meta, state: _restore(model, meta, state, entry))) is not None:
        model.to(dev).eval()
        model.info = {**base_info, **cached, "source": "cache", "path": str(entry.weights)}
        _report(model)
        return model
    checkpoints = entry.path.with_name(entry.path.name + ".checkpoints")  # train=dat resumes from these
    source, metrics = _obtain_weights(model, parsed, data, merged, base_info, dev, seed, verbose, checkpoints)
    model.to(dev).eval()
    if metrics is None:
        accuracy, n = evaluate_accuracy(
            model, data.test, batch_size=merged.eval_batch_size, limit=merged.test_subset, seed=seed
        )
        metrics = {"test_accuracy": accuracy, "n_test": n, "train_seconds": 0.0}
    meta = {
        **base_info,
        "source": source,
        "clean_accuracy": metrics["test_accuracy"],
        "clean_accuracy_n": metrics["n_test"],
        "train_seconds": metrics["train_seconds"],
        "train_metrics": metrics,
        "versions": versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if int(os.environ.get("RANK", "0")) != 0:  # a torchrun process other than rank 0: rank 0 stores the entry
        model.info = {**meta, "weights_hash": weights_hash(model), "path": str(entry.weights)}
        return model
    header = checkpoint_header({"arch": meta["arch"], "dataset": meta["dataset"]})
    meta = entry.store(network_state(model), meta, header)
    shutil.rmtree(checkpoints, ignore_errors=True)  # a train=dat run's checkpoints: the model is stored now
    model.info = {**meta, "path": str(entry.weights)}
    _report(model)
    return model


# -- the stages of load_model() ------------------------------------------------------------------------


def build_untrained(parsed: Mapping[str, Any], data: DataBundle, seed: int) -> tuple[Classifier, dict[str, Any]]:
    """The untrained Classifier (its initial weights fixed by ``seed``) and the provenance every source shares."""
    arch, kwargs = parsed["arch"], parsed["kwargs"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the initial weights are part of what the seed fixes
        if arch == CUSTOM:
            model = build_custom_classifier(parsed, data)
        else:
            model = build_classifier(arch, data, name=parsed["name"], amp=parsed["amp"], **kwargs)
    base_info: dict[str, Any] = {
        "arch": arch,
        "name": parsed["name"],
        # what the leaderboard's model column shows (with the weights hash)
        "model_source": parsed["target"] or f"zoo:{arch}",
        "dataset": data.name,
        "kwargs": kwargs,
        "adaptation": dict(model.info["adaptation"]),  # type: ignore[call-overload]
        "seed": seed,
    }
    return model, base_info


def _from_checkpoint(
    model: Classifier, path: Path, base_info: dict[str, Any], data: DataBundle, dev: torch.device, seed: int
) -> Classifier:
    """The user's weights; their clean accuracy is measured on a seeded test subset."""
    load_weights(model, path)
    model.to(dev).eval()
    accuracy, n = evaluate_accuracy(model, data.test, limit=CHECKPOINT_EVAL_LIMIT, seed=seed)
    model.info = {
        **base_info,
        "source": "checkpoint",
        "path": str(path),
        "weights_hash": weights_hash(model),
        "clean_accuracy": accuracy,
        "clean_accuracy_n": n,
        "recipe": None,
    }
    _report(model)
    return model


def _obtain_weights(
    model: Classifier,
    parsed: Mapping[str, Any],
    data: DataBundle,
    recipe: Recipe,
    base_info: dict[str, Any],
    dev: torch.device,
    seed: int,
    verbose: bool,
    checkpoints: Path | None = None,
) -> tuple[str, dict[str, Any] | None]:
    """Hub weights (fine-tuned when the head is new) or training from scratch: ``(source, training metrics)``."""
    arch = parsed["arch"]
    if not parsed["hub"]:
        log.info("%s: no cached weights for %s (key %s); training on %s", arch, data.name, base_info["cache_key"], dev)
        return "trained", train_classifier(model, data, recipe, device=dev, seed=seed, verbose=verbose,
                                           checkpoint_dir=checkpoints)  # fmt: skip
    net, adaptation, head_reset = _hub(arch, data, parsed["kwargs"], verbose)
    model.net = net
    base_info["adaptation"] = adaptation
    if not head_reset:
        return "hub", None
    log.info("%s: hub weights with a new %d-class head; fine-tuning with the recipe", arch, data.num_classes)
    base_info["init"] = "hub"
    return "trained", train_classifier(model, data, recipe, device=dev, seed=seed, verbose=verbose)


def _hub(arch: str, data: DataBundle, kwargs: Mapping[str, Any], verbose: bool) -> tuple[Any, dict[str, Any], bool]:
    channels, height, width = data.input_shape
    try:
        net, meta, head_reset = hub_net(
            arch, in_chans=channels, num_classes=data.num_classes, image_size=(height, width), verbose=verbose, **kwargs
        )
    except (ConfigError, CheckpointError):
        raise
    except Exception as exc:
        if _looks_offline(exc):
            raise OfflineError(
                f"could not download the hub weights for {arch!r} ({type(exc).__name__}: {exc}). This machine looks "
                "offline: download them once on a machine with network (they are cached under $TORCH_HOME or the "
                "Hugging Face cache), give model.checkpoint=/path/to/weights.safetensors, or set model.hub=false "
                "to train the model here"
            ) from exc
        raise
    return net, meta, head_reset


def _looks_offline(exc: BaseException) -> bool:
    """True for the errors urllib, requests, httpx and huggingface_hub raise when there is no network."""
    seen: BaseException | None = exc
    while seen is not None:
        module = type(seen).__module__
        if isinstance(seen, (OSError, ConnectionError, TimeoutError)) or module.split(".")[0] in (
            "urllib3",
            "requests",
            "httpx",
            "httpcore",
            "huggingface_hub",
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _restore(model: Classifier, meta: dict[str, Any], state: dict[str, torch.Tensor], entry: Entry) -> dict[str, Any]:
    """Load a verified cache entry's weights into ``model``; its metadata."""
    apply_state(model, state, entry.weights)
    return meta


def _report(model: Classifier) -> None:
    info = model.info
    accuracy = info.get("clean_accuracy")
    shown = f"{accuracy:.2%}" if isinstance(accuracy, float) else "n/a"
    log.info("%s on %s: %s (%s), clean accuracy %s", info["arch"], info["dataset"], info["source"], info["path"], shown)

"""Learned priors as cached artifacts: spec -> (reference models -> gradients -> fit) -> cache entry.

A prior spec (``conf/prior/<kind>.yaml``) names the prior ``kind``, the reference (surrogate) models whose
input gradients it is learned from, how many training images to take gradients on, how to train the
references, and the kind's own hyper-parameters. :func:`load_prior` returns the cached prior, or builds
and caches it first (progress bars while it trains).

Cache layout, under the zoo cache root (``cache_dir``, default ``$ADVSUITE_HOME/zoo``; the reference
models are cached there by the zoo as usual)::

    <cache_dir>/priors/<dataset>/<kind>-<key>/prior.safetensors   # the prior's state_dict
    <cache_dir>/priors/<dataset>/<kind>-<key>/meta.json           # written last: the commit marker

``key`` hashes the resolved spec (defaults filled in, ``auto`` references resolved), the dataset (name,
shape, classes, training-set size), the seed and :data:`CACHE_VERSION`. An entry without ``meta.json``,
or whose weights do not load or do not match the recorded hash, is discarded with a warning and rebuilt.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib
import inspect
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from advsuite.configs import to_plain
from advsuite.data.bundle import DataBundle
from advsuite.device import resolve_device
from advsuite.errors import CheckpointError, ConfigError
from advsuite.priors.base import Prior
from advsuite.priors.gradients import SURROGATE_RECIPE, surrogate_names
from advsuite.training import Recipe

log = logging.getLogger(__name__)

#: bump when the cache layout, the key derivation or the gradient recipe changes
CACHE_VERSION = 1
WEIGHTS_FILE = "prior.safetensors"
META_FILE = "meta.json"

#: kind -> (module, prior class, fit function); imported lazily, so a kind's module loads only when used
PRIOR_KINDS: dict[str, tuple[str, str, str]] = {
    "pca": ("advsuite.priors.pca", "PCAPrior", "fit_pca"),
    "ae": ("advsuite.priors.autoencoder", "AEPrior", "fit_autoencoder"),
    "vae": ("advsuite.priors.autoencoder", "VAEPrior", "fit_autoencoder"),
    "gan": ("advsuite.priors.gan", "GANPrior", "fit_gan"),
    "pgan": ("advsuite.priors.pgan", "PGANPrior", "fit_pgan"),
}

#: spec keys every kind takes, with their defaults
COMMON_DEFAULTS: dict[str, Any] = {
    "kind": None,
    # auto: AUTO_REFERENCES cheap architectures from REFERENCE_POOL, none of them the victim's
    "references": "auto",
    # gradients are taken on a seeded random subset of this many TRAINING images (capped at the split
    # size; null: all of them)
    "n_images": 4000,
    # merged into the zoo's default recipe for every reference (and so into their zoo cache keys)
    "reference_recipe": dict(SURROGATE_RECIPE),
}

#: each kind's hyper-parameters (passed to its fit function) with their defaults; None = the fit's own choice
KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "pca": {"components": None, "basis_only": True, "random_sign": True, "center": False},
    "ae": {"latent_channels": None, "epochs": 8, "lr": 1e-3, "batch_size": 64},
    "vae": {"latent_channels": None, "epochs": 8, "lr": 1e-3, "batch_size": 64, "kl_weight": None},
    "gan": {"latent_dim": None, "epochs": 25, "lr": 2e-4, "batch_size": 64},
    "pgan": {"latent_dim": None, "epochs_per_scale": 1.0, "lr": 2e-4, "batch_size": 64},
}


_POSITIVE_INT = ("n_images", "components", "latent_channels", "epochs", "batch_size", "latent_dim")
_POSITIVE = ("lr", "epochs_per_scale", "kl_weight")


# ------------------------------------------------------------------------------------------------ registry


def prior_kind(kind: str) -> tuple[type[Prior], Callable[..., Prior]]:
    """The (prior class, fit function) of ``kind``; :class:`ConfigError` for an unknown or missing kind."""
    if kind not in PRIOR_KINDS:
        raise ConfigError(f"unknown prior kind {kind!r}; valid kinds: {', '.join(PRIOR_KINDS)}")
    module_name, cls_name, fit_name = PRIOR_KINDS[kind]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise ConfigError(f"prior kind {kind!r} needs {module_name}, which is not installed") from exc
    return getattr(module, cls_name), getattr(module, fit_name)


# ------------------------------------------------------------------------------------------------ spec


def resolve_spec(spec: Mapping[str, Any], victim_arch: str | None = None) -> dict[str, Any]:
    """Validate a prior spec and fill in every default: the dict the cache key hashes.

    ``references: auto`` (or null) picks :data:`AUTO_REFERENCES` architectures from :data:`REFERENCE_POOL`
    that differ from ``victim_arch``. A reference of the victim's architecture is refused: the papers learn
    priors from surrogate models only, and a prior from the victim's own architecture would leak white-box
    knowledge into a black-box attack.
    """
    spec = dict(to_plain(spec) or {})
    spec.pop("_target_", None)
    kind = spec.get("kind")
    if kind not in KIND_DEFAULTS:
        raise ConfigError(f"prior spec needs `kind`, one of {', '.join(KIND_DEFAULTS)}; got {kind!r}")
    defaults = {**COMMON_DEFAULTS, **KIND_DEFAULTS[kind]}
    unknown = sorted(set(spec) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown keys {unknown} in the {kind} prior spec; valid keys: {', '.join(defaults)}")
    out = {**defaults, **spec}
    for key in _POSITIVE_INT:
        value = out.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"prior.{key} must be a positive integer or null, got {value!r}")
    for key in _POSITIVE:
        value = out.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise ConfigError(f"prior.{key} must be a positive number, got {value!r}")
    for key in ("basis_only", "random_sign", "center"):
        if key in out and not isinstance(out[key], bool):
            raise ConfigError(f"prior.{key} must be true or false, got {out[key]!r}")
    recipe = out["reference_recipe"] or {}
    if not isinstance(recipe, Mapping):
        raise ConfigError(f"prior.reference_recipe must be a mapping of recipe keys, got {recipe!r}")
    Recipe.coerce(None, recipe)  # unknown or bad recipe keys fail here, before anything trains
    out["reference_recipe"] = dict(recipe)
    out["references"] = _resolve_references(out["references"], victim_arch)
    return out


def _resolve_references(references: Any, victim_arch: str | None) -> list[Any]:
    why = (
        "a prior is learned from surrogate models of other architectures only (as in QEBA/NonLinear-BA/PSBA), "
        "otherwise the attack would use white-box knowledge of the victim"
    )
    return surrogate_names(references, victim_arch, key="prior.references", why=why)


def _dataset_id(data: DataBundle) -> dict[str, Any]:
    return {
        "name": data.name,
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "n_train": len(data.train),  # type: ignore[arg-type]
    }


def cache_key(resolved: Mapping[str, Any], data: DataBundle, seed: int) -> str:
    """Hash of the resolved spec, the references' full model specs (so editing ``conf/model/<name>.yaml``
    makes a new entry), the dataset, the seed and :data:`CACHE_VERSION`."""
    from advsuite.priors.gradients import reference_spec

    spec = dict(resolved)
    if spec["kind"] == "pca" and spec.get("components") is None:  # the key names the k the default gives
        from advsuite.priors.pca import default_components

        spec["components"] = default_components(tuple(data.input_shape))
    blob = {
        "spec": spec,
        "reference_specs": [reference_spec(r, resolved["reference_recipe"]) for r in resolved["references"]],
        "dataset": _dataset_id(data),
        "seed": int(seed),
        "cache_version": CACHE_VERSION,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:12]


def priors_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``<cache_dir or $ADVSUITE_HOME/zoo>/priors``."""
    from advsuite.models.zoo import zoo_dir

    return zoo_dir(cache_dir) / "priors"


# ------------------------------------------------------------------------------------------------ files


def state_hash(prior: Prior, length: int = 16) -> str:
    """sha256 over the prior's state_dict (names, dtypes, shapes, bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(prior.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:length]


def _store(prior: Prior, entry: Path, meta: Mapping[str, Any]) -> None:
    from safetensors.torch import save_file

    from advsuite.models.checkpoints import atomic_write

    entry.mkdir(parents=True, exist_ok=True)
    (entry / META_FILE).unlink(missing_ok=True)  # a rebuild: the entry is incomplete until meta.json is back
    state = {k: v.detach().cpu().contiguous().clone() for k, v in prior.state_dict().items()}
    atomic_write(entry / WEIGHTS_FILE, lambda tmp: save_file(state, tmp, metadata={"kind": prior.kind}))
    text = json.dumps(meta, indent=2, sort_keys=True, default=str)
    atomic_write(entry / META_FILE, lambda tmp: Path(tmp).write_text(text))


def prior_from_cache(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> Prior:
    """Rebuild a cached prior from its entry directory (or a file in it): ``cls(**config)`` + its weights.

    Raises :class:`CheckpointError` when the entry is incomplete or corrupt.
    """
    from safetensors.torch import load_file

    entry = Path(path)
    entry = entry.parent if entry.is_file() else entry
    meta_path, weights_path = entry / META_FILE, entry / WEIGHTS_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{entry} is not a complete prior cache entry (no {META_FILE})")
    try:
        meta = json.loads(meta_path.read_text())
        cls, _ = prior_kind(meta["kind"])
        prior = cls(**meta["config"])
        prior.load_state_dict(load_file(str(weights_path)), strict=True)
    except ConfigError:
        raise
    except Exception as exc:
        raise CheckpointError(f"prior cache entry {entry} is corrupt ({type(exc).__name__}: {exc})") from exc
    if meta.get("weights_hash") != state_hash(prior):
        raise CheckpointError(f"weights in {weights_path} do not match the hash recorded in {meta_path}")
    prior.info = {**meta, "path": str(entry), "source": "cache"}  # type: ignore[assignment]
    return prior.to(resolve_device(device)).eval()


def _load_cached(entry: Path, device: torch.device) -> Prior | None:
    """The cached prior, or None on a miss; an incomplete or corrupt entry is removed with a warning."""
    if not entry.exists():
        return None
    try:
        return prior_from_cache(entry, device)
    except CheckpointError as exc:
        warnings.warn(f"prior cache entry {entry} is unusable ({exc}); discarding it and rebuilding", stacklevel=3)
        log.warning("unusable prior cache entry %s: %s", entry, exc)
        shutil.rmtree(entry, ignore_errors=True)
        return None


# ------------------------------------------------------------------------------------------------ fitting


def _fit_kwargs(kind: str, fit: Callable[..., Prior], resolved: Mapping[str, Any]) -> dict[str, Any]:
    """The kind's hyper-parameters as the fit function's keyword arguments."""
    params = {key: resolved[key] for key in KIND_DEFAULTS[kind]}
    if kind == "pca":
        params["k"] = params.pop("components")
    if kind in ("ae", "vae"):
        params["variational"] = kind == "vae"
    accepted = inspect.signature(fit).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        return params
    unsupported = sorted(k for k, v in params.items() if k not in accepted and v is not None)
    if unsupported:
        raise ConfigError(f"{fit.__module__}.{fit.__name__} does not take {unsupported}; drop them from the spec")
    return {k: v for k, v in params.items() if k in accepted}


def _versions() -> dict[str, str]:
    from advsuite.models.zoo import versions

    return versions()


def load_prior(
    spec: Mapping[str, Any],
    data: DataBundle,
    *,
    device: torch.device | str = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    verbose: bool = True,
    victim_arch: str | None = None,
    force: bool = False,
) -> Prior:
    """The prior ``spec`` describes for ``data``, from the cache or built (and cached) on demand.

    ``cache_dir`` is the zoo cache root (default ``$ADVSUITE_HOME/zoo``): the reference models are cached
    there, the prior under ``<cache_dir>/priors``. ``victim_arch`` is excluded from ``auto`` references and
    refused in explicit ones. ``force`` rebuilds the prior (the references still come from the zoo cache).
    The returned prior is in eval mode on ``device``; ``prior.info`` holds its metadata plus ``path`` and
    ``source`` (``cache`` or ``trained``).
    """
    from advsuite.priors.gradients import gradient_data

    resolved = resolve_spec(spec, victim_arch)
    kind = resolved["kind"]
    _, fit = prior_kind(kind)  # fails early if the kind's module is missing ...
    kwargs = _fit_kwargs(kind, fit, resolved)  # ... or does not take a spec key
    dev = resolve_device(device)
    key = cache_key(resolved, data, seed)
    entry = priors_dir(cache_dir) / data.name / f"{kind}-{key}"
    if not force:
        cached = _load_cached(entry, dev)
        if cached is not None:
            log.info("%s prior for %s: cache (%s)", kind, data.name, entry)
            return cached

    log.info("%s prior for %s: not cached (key %s); building it on %s", kind, data.name, key, dev)
    start = time.perf_counter()
    gradients = gradient_data(
        resolved["references"],
        data,
        n_images=resolved["n_images"],
        device=dev,
        cache_dir=cache_dir,
        seed=seed,
        verbose=verbose,
        recipe_overrides=resolved["reference_recipe"],
    )
    accepted = inspect.signature(fit).parameters
    common = {"seed": seed, "device": dev, "verbose": verbose}
    kwargs.update({k: v for k, v in common.items() if k in accepted})
    fit_start = time.perf_counter()
    prior = fit(gradients.grads, **kwargs)
    fit_seconds = time.perf_counter() - fit_start
    prior.to(dev).eval()
    meta = {
        "kind": kind,
        "class": f"{type(prior).__module__}.{type(prior).__qualname__}",
        "config": prior.config(),
        "spec": resolved,
        "key": key,
        "references": gradients.references,
        "dataset": _dataset_id(data),
        "input_shape": list(prior.input_shape),
        "n_gradients": len(gradients.grads),
        "n_dropped": gradients.dropped,
        "gradient_sources": "training split",
        "metrics": {
            **dict(getattr(prior, "train_metrics", None) or {}),
            "reference_seconds": gradients.reference_seconds,  # loading or training the references
            "gradient_seconds": gradients.gradient_seconds,
            "fit_seconds": fit_seconds,
            "total_seconds": time.perf_counter() - start,
        },
        "seed": int(seed),
        "weights_hash": state_hash(prior),
        "versions": _versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cache_version": CACHE_VERSION,
    }
    _store(prior, entry, meta)
    prior.info = {**meta, "path": str(entry), "source": "trained"}  # type: ignore[assignment]
    log.info("%s prior for %s: built in %.0f s, cached at %s", kind, data.name, meta["metrics"]["total_seconds"], entry)
    return prior

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
shape, classes, training-set size) and the seed. The entry lives in the artifact cache
(:mod:`advsuite.artifacts`): an incomplete or corrupt one is discarded with a warning and rebuilt.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import inspect
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from advsuite.artifacts import Entry, content_key
from advsuite.attacks.boundary.priors.base import Prior
from advsuite.configs import to_plain
from advsuite.data.bundle import DataBundle
from advsuite.device import resolve_device
from advsuite.errors import ConfigError
from advsuite.models.surrogates import SURROGATE_RECIPE, surrogate_names
from advsuite.training import Recipe

log = logging.getLogger(__name__)

WEIGHTS_FILE = "prior.safetensors"

#: kind -> (module, prior class, fit function); imported lazily, so a kind's module loads only when used
PRIOR_KINDS: dict[str, tuple[str, str, str]] = {
    "pca": ("advsuite.attacks.boundary.priors.pca", "PCAPrior", "fit_pca"),
    "ae": ("advsuite.generative.autoencoder", "AutoEncoder", "fit_autoencoder"),
    "vae": ("advsuite.generative.autoencoder", "VAE", "fit_autoencoder"),
    "gan": ("advsuite.generative.gan", "GAN", "fit_gan"),
    "pgan": ("advsuite.generative.pgan", "ProgressiveGAN", "fit_pgan"),
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
    "pgan": {"latent_dim": None, "epochs_per_scale": 8.0, "lr": 1e-3, "batch_size": 16},
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
    makes a new entry), the dataset and the seed."""
    from advsuite.models.surrogates import reference_spec

    spec = dict(resolved)
    if spec["kind"] == "pca" and spec.get("components") is None:  # the key names the k the default gives
        from advsuite.attacks.boundary.priors.pca import default_components

        spec["components"] = default_components(tuple(data.input_shape))
    blob = {
        "spec": spec,
        "reference_specs": [reference_spec(r, resolved["reference_recipe"]) for r in resolved["references"]],
        "dataset": _dataset_id(data),
        "seed": int(seed),
    }
    return content_key(blob)


def prior_entry(cache_dir: str | os.PathLike[str] | None, dataset: str, name: str) -> Entry:
    """The artifact-cache entry ``<cache root>/priors/<dataset>/<name>``."""
    return Entry.at(cache_dir, "priors", dataset, name, weights_file=WEIGHTS_FILE, what="prior")


def _rebuild(meta: dict[str, Any], state: dict[str, torch.Tensor]) -> Prior:
    cls, _ = prior_kind(meta["kind"])
    prior = cls(**meta["config"])
    prior.load_state_dict(state, strict=True)
    prior.info = meta
    return prior


def prior_from_cache(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> Prior:
    """Rebuild a cached prior from its entry directory (or a file in it): ``cls(**config)`` + its weights.

    Raises :class:`CheckpointError` when the entry is incomplete or corrupt.
    """
    path = Path(path)
    entry = Entry(path.parent if path.is_file() else path, WEIGHTS_FILE, "prior")
    return _placed(entry.read(_rebuild), entry, device)


def _placed(prior: Prior, entry: Entry, device: torch.device | str) -> Prior:
    prior.info = {**prior.info, "path": str(entry.path), "source": "cache"}
    return prior.to(resolve_device(device)).eval()


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
    from advsuite.models.surrogates import gradient_data

    resolved = resolve_spec(spec, victim_arch)
    kind = resolved["kind"]
    _, fit = prior_kind(kind)  # fails early if the kind's module is missing ...
    kwargs = _fit_kwargs(kind, fit, resolved)  # ... or does not take a spec key
    dev = resolve_device(device)
    key = cache_key(resolved, data, seed)
    entry = prior_entry(cache_dir, data.name, f"{kind}-{key}")
    if not force and (cached := entry.load(_rebuild)) is not None:
        log.info("%s prior for %s: cache (%s)", kind, data.name, entry.path)
        return _placed(cached, entry, dev)

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
        "versions": _versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    meta = entry.store(prior.state_dict(), meta, {"kind": kind})
    prior.info = {**meta, "path": str(entry.path), "source": "trained"}
    seconds = meta["metrics"]["total_seconds"]
    log.info("%s prior for %s: built in %.0f s, cached at %s", kind, data.name, seconds, entry.path)
    return prior

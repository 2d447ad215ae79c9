"""Surrogate models: choosing them (never the victim's architecture), loading them from the zoo with a
cheap recipe, and their input gradients, the training data of every learned prior. The priors of the
decision-based attacks, the transfer models of the universal attacks and the surrogates of the patch
attacks all come from here.

As in the authors' ``gradient_generate.py`` (QEBA / NonLinear-BA / PSBA): for an image x in [0, 1] the
datum is ``d CE(model(x), argmax model(x)) / dx`` (loss summed over the batch, so each image gets its own
gradient), normalised to unit L2. Our :class:`~advsuite.models.Classifier` normalises inside, so the
gradient is already in pixel space (the authors divide by the normalisation std for the same reason).

Images come from the TRAINING split only (a seeded random subset), so a prior never saw the test images
an attack is evaluated on. Mixing references: the authors' ``'rnd'`` set picks one reference model at
random per batch of 32. We draw a *balanced* random assignment instead (a seeded shuffle of equal
per-reference batch counts), so every reference contributes even when there are only a few batches.

References are zoo models named by their config (``conf/model/<name>.yaml``), trained on demand and
cached by the zoo; ``recipe_overrides`` (e.g. ``{"epochs": 3}``) keeps that training cheap.
"""

from __future__ import annotations

import importlib.resources
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset
from tqdm.auto import tqdm

from advsuite.configs import to_plain
from advsuite.data.bundle import DataBundle, select_indices
from advsuite.device import resolve_device
from advsuite.errors import ConfigError
from advsuite.models.classifier import Classifier
from advsuite.validation import check_images

#: images per gradient batch, and so the granularity of the reference mixing (the authors' value)
BATCH_SIZE = 32
Reference = str | Mapping[str, Any]


@dataclass
class GradientData:
    """Unit-norm gradients plus where they came from (recorded in the prior's metadata)."""

    grads: torch.Tensor  # (N, C, H, W), float32, CPU, unit L2 per row
    indices: torch.Tensor  # (N,) training-split index of each gradient's image
    sources: torch.Tensor  # (N,) index into ``references`` of the model that produced it
    references: list[dict[str, Any]] = field(default_factory=list)
    dropped: int = 0  # images whose gradient was exactly zero (or not finite) and were left out
    reference_seconds: float = 0.0  # loading (or training) the reference models
    gradient_seconds: float = 0.0


#: the zoo recipe overrides for surrogate/reference models (priors, transfer attacks): CPU-sized, a seeded
#: 10k-image subset for 3 epochs (6 epochs on all 50k CIFAR-10 images took 16 min for resnet18, 52 min for cifarcnn)
SURROGATE_RECIPE: dict[str, Any] = {"epochs": 3, "train_subset": 10000}


def model_config(name: str) -> dict[str, Any]:
    """The packaged zoo model config ``conf/model/<name>.yaml`` as a plain dict."""
    from omegaconf import OmegaConf

    folder = importlib.resources.files("advsuite.conf") / "model"
    path = folder / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))
        raise ConfigError(f"unknown reference model {name!r}; valid zoo model configs: {', '.join(known)}")
    loaded = OmegaConf.to_container(OmegaConf.create(path.read_text()), resolve=True)
    if not isinstance(loaded, dict):
        raise ConfigError(f"model config {name}.yaml is not a mapping")
    return {str(k): v for k, v in loaded.items()}


#: the surrogates ``auto`` picks from, cheapest first on a CPU (measured in docs/priors.md); all of them
#: train in minutes on 28-32 px inputs
REFERENCE_POOL = ("smallcnn", "resnet18", "cifarcnn")
#: how many surrogates ``auto`` picks
AUTO_REFERENCES = 2


def surrogate_names(names: Any, victim_arch: str | None, *, key: str, why: str) -> list[Any]:
    """Surrogate models for an attack or prior: ``auto`` (or null) picks :data:`AUTO_REFERENCES` of
    :data:`REFERENCE_POOL` whose architecture is not the victim's; a list (zoo names or inline specs) is
    checked, and one of the victim's architecture is refused (``key`` is the config key to fix, ``why`` the
    reason given)."""
    if names is None or names == "auto":
        return [n for n in REFERENCE_POOL if reference_spec(n)["arch"] != victim_arch][:AUTO_REFERENCES]
    names = to_plain(names)
    listed = [names] if isinstance(names, str | Mapping) else names
    if not isinstance(listed, list) or not listed:
        raise ConfigError(f"{key} must be `auto` or a non-empty list of zoo model names, got {names!r}")
    out = [n if isinstance(n, str) else dict(n) for n in listed]
    for name in out:
        arch = reference_spec(name)["arch"]
        if victim_arch is not None and arch == victim_arch:
            raise ConfigError(
                f"{name!r} in {key} has the victim's architecture ({arch}): {why}. Drop it from {key} or use {key}=auto"
            )
    return out


def reference_spec(reference: Reference, recipe_overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A zoo model spec for one reference: its config (by name, or inline) with ``recipe_overrides`` on top.

    The prior's overrides win over the model config's own ``recipe_overrides``: they are what keeps the
    reference training cheap.
    """

    reference = to_plain(reference)
    if isinstance(reference, str):
        spec = model_config(reference)
    elif isinstance(reference, Mapping):
        spec = {str(k): v for k, v in reference.items()}
        if not spec.get("arch"):
            raise ConfigError(f"an inline reference model spec needs an `arch`, got {spec}")
    else:
        raise ConfigError(f"a reference is a zoo model config name or a model spec mapping, got {reference!r}")
    spec["recipe_overrides"] = {**dict(spec.get("recipe_overrides") or {}), **dict(recipe_overrides or {})}
    return spec


def assign_batches(n_batches: int, n_references: int, seed: int) -> torch.Tensor:
    """Which reference computes each batch: a seeded shuffle of (almost) equal counts per reference."""
    base = torch.arange(n_references).repeat(math.ceil(n_batches / n_references))[:n_batches]
    gen = torch.Generator().manual_seed(seed + 1)  # a stream distinct from the image selection
    return base[torch.randperm(n_batches, generator=gen)]


def input_gradients(model: Classifier, x: torch.Tensor) -> torch.Tensor:
    """``d CE(model(x), argmax model(x)) / dx`` per image (the authors' ``calc_gt_grad``), float32."""
    check_images(x, bounds=model.bounds, shape=model.input_shape, name="reference gradient inputs")
    x = x.detach().clone().requires_grad_(True)
    with model.trusted_inputs(), torch.enable_grad():  # checked above, without autograd
        logits = model(x).float()
        loss = F.cross_entropy(logits, logits.argmax(1).detach(), reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad.detach()


def unit_normalise(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(unit-L2 rows, kept mask)``. Rows are scaled by their max first, so tiny gradients of confident
    predictions (1e-30 and below) do not underflow to a zero norm; exact zeros and non-finite rows are dropped."""
    flat = grad.flatten(1)
    peak = flat.abs().amax(1)
    keep = torch.isfinite(flat).all(1) & (peak > 0)
    scaled = flat[keep] / peak[keep].unsqueeze(1)
    out = scaled / scaled.norm(dim=1, keepdim=True)
    return out.view(-1, *grad.shape[1:]), keep


def _fetch(dataset: Dataset, idx: torch.Tensor) -> torch.Tensor:
    """Images ``idx`` of ``dataset`` as a float32 NCHW batch (fast path for in-memory tensors)."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[0][idx].float()
    return torch.stack([torch.as_tensor(dataset[int(i)][0]).float() for i in idx])


def load_references(
    references: Sequence[Reference],
    data: DataBundle,
    *,
    device: torch.device | str = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    verbose: bool = True,
    recipe_overrides: Mapping[str, Any] | None = None,
) -> list[Classifier]:
    """The reference classifiers from the zoo (trained on demand with the default recipe plus overrides)."""
    from advsuite.models.zoo import load_model

    if not references:
        raise ConfigError("a prior needs at least one reference model (prior.references)")
    models = []
    for reference in references:
        spec = reference_spec(reference, recipe_overrides)
        models.append(load_model(spec, data, device=device, cache_dir=cache_dir, seed=seed, verbose=verbose))
    return models


def gradient_data(
    references: Sequence[Reference],
    data: DataBundle,
    *,
    n_images: int | None,
    device: torch.device | str = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    verbose: bool = True,
    recipe_overrides: Mapping[str, Any] | None = None,
    batch_size: int = BATCH_SIZE,
) -> GradientData:
    """Unit-norm input gradients of the references on ``n_images`` training images, with provenance."""
    dev = resolve_device(device)
    start = time.perf_counter()
    models = load_references(
        references,
        data,
        device=dev,
        cache_dir=cache_dir,
        seed=seed,
        verbose=verbose,
        recipe_overrides=recipe_overrides,
    )
    loaded = time.perf_counter()
    indices = select_indices(len(data.train), n_images, seed)  # type: ignore[arg-type]
    chunks = list(indices.split(batch_size))
    owner = assign_batches(len(chunks), len(models), seed)
    grads, kept_idx, sources = [], [], []
    bar = tqdm(total=len(indices), desc="reference gradients", unit="img", disable=not verbose, leave=False)
    for chunk, which in zip(chunks, owner.tolist(), strict=True):
        model = models[which]
        with model.evaluating():
            grad = input_gradients(model, _fetch(data.train, chunk).to(model.device))
        unit, keep = unit_normalise(grad.cpu())
        grads.append(unit)
        kept_idx.append(chunk[keep])
        sources.append(torch.full((int(keep.sum()),), which, dtype=torch.long))
        bar.update(len(chunk))
    bar.close()
    out = torch.cat(grads)
    if len(out) == 0:
        raise ConfigError(
            "every reference gradient was zero (saturated softmax); use other reference models or more images"
        )
    provenance = [
        {
            "reference": ref if isinstance(ref, str) else dict(ref),
            "arch": m.info.get("arch"),
            "cache_key": m.info.get("cache_key"),
            "weights_hash": m.info.get("weights_hash"),
            "clean_accuracy": m.info.get("clean_accuracy"),
            "source": m.info.get("source"),
            "train_seconds": m.info.get("train_seconds"),
            "n_gradients": int((torch.cat(sources) == i).sum()),
        }
        for i, (ref, m) in enumerate(zip(references, models, strict=True))
    ]
    return GradientData(
        grads=out,
        indices=torch.cat(kept_idx),
        sources=torch.cat(sources),
        references=provenance,
        dropped=len(indices) - len(out),
        reference_seconds=loaded - start,
        gradient_seconds=time.perf_counter() - loaded,
    )


def reference_gradients(
    references: Sequence[Reference],
    data: DataBundle,
    *,
    n_images: int | None,
    device: torch.device | str = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    verbose: bool = True,
    recipe_overrides: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """The (N, C, H, W) unit-norm gradient tensor of :func:`gradient_data` (N <= ``n_images``)."""
    return gradient_data(
        references,
        data,
        n_images=n_images,
        device=device,
        cache_dir=cache_dir,
        seed=seed,
        verbose=verbose,
        recipe_overrides=recipe_overrides,
    ).grads

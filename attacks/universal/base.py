"""Universal (image-agnostic) perturbations: what every universal attack shares.

A universal attack fits ONE perturbation δ with ‖δ‖∞ ≤ ε for a model and adds it to every image,
``x_adv = clip(x + δ, 0, 1)``. ``task=evaluate`` attacks the test images in chunks, so δ is fitted
lazily on the first call for a model (the Classifier passed to ``run``), cached on the instance keyed
on ``id(model)`` (with a weak reference, so a new model at a recycled address is refitted) and reused
for every later chunk.

Queries: fitting costs are counted once, in model rows (one forward, or forward+backward, pass of one
image), and reported as ``extras["fit_queries"]`` and the ``fit_queries`` metric; each attacked image is
then charged one query, the forward pass that checks whether ``x + δ`` fools the model.

Metrics (:meth:`UniversalAttack.extra_metrics`), measured afresh on ALL evaluated images:

- ``fooling_rate``: the fraction whose top-1 prediction changes, ``argmax f(x + δ) ≠ argmax f(x)``. It uses
  no labels (the definition of Moosavi-Dezfooli et al. 2017 and of GD-UAP's ``evaluate.py``), so images the
  model already misclassifies count too.
- ``transfer_fooling_rate``: the mean fooling rate of the same δ on the zoo models in ``transfer_models``
  (loaded in :meth:`~UniversalAttack.prepare`), with one ``fooling_rate:<model>`` key per model.
"""

from __future__ import annotations

import abc
import math
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from advsuite.attack import Access, AttackResult, FixedEpsilonAttack, PrepareContext
from advsuite.configs import to_plain
from advsuite.data import sample_tensors
from advsuite.errors import ConfigError, InputError
from advsuite.models.classifier import Classifier
from advsuite.models.surrogates import SURROGATE_RECIPE
from advsuite.validation import check_flags, check_int, check_number

#: GD-UAP's ξ = 10 on the 0-255 scale
DEFAULT_EPS = 10 / 255


def linf_radius(eps: float, dtype: torch.dtype = torch.float32) -> float:
    """The largest ``dtype`` value <= ``eps``: clamping to it keeps ‖δ‖∞ <= eps exactly, not up to rounding."""
    value = torch.tensor(eps, dtype=dtype)
    if float(value) > eps:
        value = torch.nextafter(value, torch.zeros((), dtype=dtype))
    return float(value)


def apply_perturbation(x: torch.Tensor, delta: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    """``clip(x + δ)`` into the model's bounds (δ broadcasts over the batch)."""
    return (x + delta.to(x.device, x.dtype)).clamp(*bounds)


def fooled(model: Classifier, x: torch.Tensor, delta: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Per image: does adding δ change the top-1 prediction? Label-free (GD-UAP's fooling criterion)."""
    clean = model.predict(x, batch_size)
    adv = model.predict(apply_perturbation(x, delta, model.bounds), batch_size)
    return clean != adv


def fooling_rate(model: Classifier, x: torch.Tensor, delta: torch.Tensor, batch_size: int = 256) -> float | None:
    """Fraction of ``x`` whose prediction changes under δ (``None`` for no images)."""
    return float(fooled(model, x, delta, batch_size).float().mean()) if len(x) else None


@dataclass
class _Fit:
    model: weakref.ref[Classifier]
    delta: torch.Tensor
    info: dict[str, Any]


@dataclass
class UniversalAttack(FixedEpsilonAttack):
    """Base class: one δ per model, fitted lazily by :meth:`fit`, applied to every image."""

    access: ClassVar[Access] = "whitebox"
    leaderboard_metrics: ClassVar[Mapping[str, str]] = {
        "fooling_rate": "fooling rate",
        "transfer_fooling_rate": "transfer fooling rate",
    }
    norm = "linf"

    eps: float = DEFAULT_EPS
    #: zoo model config names (conf/model/<name>.yaml) the fitted δ is also measured on
    transfer_models: list[str] = field(default_factory=list)
    #: zoo recipe overrides for transfer models not yet in the cache (the priors' CPU-sized references)
    transfer_recipe: Any = field(default_factory=lambda: dict(SURROGATE_RECIPE))
    seed: int = 0
    verbose: bool = True

    _fits: dict[int, _Fit] = field(default_factory=dict, init=False, repr=False, compare=False)
    _train: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, init=False, repr=False, compare=False)
    _transfer: dict[str, Classifier] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if isinstance(self.eps, bool) or not isinstance(self.eps, int | float):
            raise ConfigError(
                f"{owner}: eps must be one number (a universal perturbation has one radius), got {self.eps!r}"
            )
        check_number(owner, "eps", self.eps)
        self.eps = float(self.eps)
        check_int(owner, "seed", self.seed, 0)
        check_flags(owner, self, "verbose")
        names = to_plain(self.transfer_models)
        if names is None:
            names = []
        if isinstance(names, str) or not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"{owner}: transfer_models must be a list of zoo model names, got {names!r}")
        self.transfer_models = list(names)
        recipe = to_plain(self.transfer_recipe)
        if recipe is not None and not isinstance(recipe, dict):
            raise ConfigError(f"{owner}: transfer_recipe must be a mapping of recipe keys, got {recipe!r}")
        self.transfer_recipe = dict(recipe or {})
        if self.transfer_models:
            from advsuite.models.surrogates import model_config

            for name in self.transfer_models:
                model_config(name)  # an unknown name fails here, listing the valid ones

    # ------------------------------------------------------------------------------------ data and models

    def training_images_needed(self) -> int:
        """How many training images :meth:`fit` uses (loaded by :meth:`prepare`); 0 for none."""
        return 0

    def prepare(self, context: PrepareContext) -> None:
        """Load the training images :meth:`fit` needs and the transfer models (from the zoo)."""
        owner = type(self).__name__
        n = self.training_images_needed()
        if n:
            x, y = sample_tensors(context.data.train, n, self.seed)
            if len(x) < n:
                raise ConfigError(f"{owner} needs {n} training images; the training split has only {len(x)}")
            self._train = (x, y)
        if self.transfer_models:
            from advsuite.models.surrogates import load_references, surrogate_names

            why = f"{owner}: with the same recipe and seed it is the victim itself"
            surrogate_names(self.transfer_models, context.victim_arch, key="attack.transfer_models", why=why)
            models = load_references(
                self.transfer_models,
                context.data,
                device=context.device,
                cache_dir=context.cache_dir,
                seed=context.seed,
                verbose=context.verbose,
                recipe_overrides=self.transfer_recipe,
            )
            self._transfer = dict(zip(self.transfer_models, models, strict=True))

    def training_images(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The (images, labels) loaded by :meth:`prepare`; a clear error when it was not called."""
        if self._train is None:
            raise InputError(
                f"{type(self).__name__} needs training images: call attack.prepare(PrepareContext(data=...)) first "
                "(task=evaluate does)"
            )
        return self._train

    # ------------------------------------------------------------------------------------ fitting

    @abc.abstractmethod
    def fit(self, model: Classifier) -> tuple[torch.Tensor, dict[str, Any]]:
        """Fit δ for ``model``: a (1, C, H, W) tensor on its device with ‖δ‖∞ <= eps, and an info dict whose
        ``queries`` is the number of model rows spent."""

    def perturbation(self, model: Classifier) -> torch.Tensor:
        """δ for ``model``, fitted on the first call and cached (keyed on the model object)."""
        return self._fit_for(model).delta

    def fit_info(self, model: Classifier) -> dict[str, Any]:
        """What fitting δ for ``model`` cost and found (queries, iterations, validation, ...)."""
        return self._fit_for(model).info

    def _fit_for(self, model: Classifier) -> _Fit:
        entry = self._fits.get(id(model))
        if entry is not None and entry.model() is model:
            return entry
        with model.trusted_inputs(), model.evaluating(), torch.enable_grad():  # fit builds its inputs in bounds itself
            delta, info = self.fit(model)
        radius = linf_radius(self.eps, delta.dtype)
        if tuple(delta.shape) != (1, *model.input_shape) or float(delta.abs().max()) > radius:
            raise AssertionError(f"{type(self).__name__}.fit returned δ of shape {tuple(delta.shape)} outside the ball")
        self._fits = {k: v for k, v in self._fits.items() if v.model() is not None}  # drop collected models
        entry = _Fit(weakref.ref(model), delta.detach(), dict(info))
        self._fits[id(model)] = entry
        return entry

    # ------------------------------------------------------------------------------------ the protocol

    def run(
        self,
        target: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        targets: torch.Tensor | None,
        starting_points: torch.Tensor | None,
    ) -> AttackResult:
        fit = self._fit_for(target)
        x_adv = apply_perturbation(x, fit.delta, target.bounds)
        with torch.no_grad():
            success = target(x_adv).argmax(1) != y
        return AttackResult(
            x=x,
            x_adv=x_adv,
            success=success,
            queries=torch.ones(len(x), dtype=torch.long, device=x.device),  # the one check per image
            extras={"fit_queries": fit.info.get("queries"), "fit": fit.info, "delta": fit.delta.detach().cpu()},
        )

    def extra_metrics(
        self,
        model: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        x_adv: torch.Tensor,
        attacked: torch.Tensor,
        *,
        targets: torch.Tensor | None,
        batch_size: int,
    ) -> dict[str, float | None]:
        """``fooling_rate`` over all ``x`` (label-free), ``fit_queries`` and, with ``transfer_models``, the
        per-model ``fooling_rate:<name>`` and their mean ``transfer_fooling_rate``."""
        fit = self._fit_for(model)
        delta = fit.delta.cpu()
        out: dict[str, float | None] = {
            "fooling_rate": fooling_rate(model, x, delta, batch_size),
            "fit_queries": float(fit.info.get("queries", math.nan)),
        }
        rates = []
        for name, other in self._transfer.items():
            if tuple(other.input_shape) != tuple(model.input_shape):
                raise ConfigError(
                    f"transfer model {name!r} takes inputs {tuple(other.input_shape)}, the victim "
                    f"{tuple(model.input_shape)}: a universal perturbation transfers only between equal shapes"
                )
            rate = fooling_rate(other, x, delta, batch_size)
            out[f"fooling_rate:{name}"] = rate
            if rate is not None:
                rates.append(rate)
        if self._transfer:
            out["transfer_fooling_rate"] = sum(rates) / len(rates) if rates else None
        return out

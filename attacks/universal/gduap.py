"""Data-free universal perturbations: GD-UAP and the feature-divergence variant.

Mopuri, Ganeshan, Babu, "Generalizable Data-free Objective for Crafting Universal Adversarial
Perturbations", TPAMI 2018 (arXiv 1801.08092; its predecessor is FFF, Mopuri, Garg, Babu, BMVC 2017).
``objective="activations"`` maximises the energy of the network's internal activations,

    min_δ  −Σ_l log( ½ ‖f_l(x + δ)‖² )        s.t. ‖δ‖∞ ≤ ε,

over the layers ``l`` collected with forward hooks (the norm pools the whole batch, as the authors'
``tf.nn.l2_loss``). ``objective="divergence"`` follows Huan, Wang, Zhang, Shang, Fu, Zhou, "Data-Free
Adversarial Perturbations for Practical Black-Box Attack", PAKDD 2020 (arXiv 2003.01295): maximise the
distance between the representations of clean and perturbed inputs, here
``−Σ_l log(½ ‖f_l(x + δ) − f_l(x)‖²)`` at the chosen layers (default: the logits). The paper's exact loss
form was not available to us; the log-L2 form mirrors GD-UAP so the two objectives share everything else.

What ``x`` is (``prior``): ``none``, the zero of the network's normalised input, i.e. the normalisation
mean image, so the network sees δ alone (GD-UAP's "no data", which feeds zeros to mean-subtracted
networks); ``range``, fresh noise images in the data range every step (``noise="gaussian"``: per channel
N(μ, σ) with μ the normalisation mean and σ = min(μ, 1 − μ)/2, clipped to [0, 1], the authors' rule
μ ± 2σ ⊂ [0, 255]; ``"uniform"``: U[0, 1]); ``data``, minibatches of training images (the reference).

The loop is the authors' ``train.py``: δ = clip(v, −ε, ε) with v ~ U[−ε, ε] trained by Adam; when more
than half of δ is saturated at ±ε and the saturated fraction changed by less than 1e-5 in one step, v
is halved (and validated just before, if half a validation period has passed). Every ``val_every``
iterations the label-free fooling rate is measured on validation images; the best δ is kept, and fitting
stops after ``patience`` validations without improvement.

Validation images (``validation``): the authors validated on 1000 held-out ImageNet images for every
prior, data-free ones included. A data-free attack should not need them, so ``auto`` validates the
``none``/``range`` priors on range-prior noise images (seeded, no labels) and the ``data`` prior on
held-out training images (disjoint from the ones it fits on); ``heldout`` opts the data-free priors in to
``n_val`` held-out training images (labels are never used); ``off`` keeps the last δ.

Defaults and where they differ from the authors:

- ``eps = 10/255`` (their ξ = 10 on 0-255). Adam's step is about ``lr`` in δ's units, so ``lr=None`` means
  ε/100, i.e. their 0.1 at ξ = 10; ``lr`` is in [0, 1] pixel units.
- CPU-sized budget: ``max_iter=2000`` (theirs 40000), ``val_every=200`` (theirs 400, or 200 before a
  rescale), ``patience=5`` (theirs 10), ``n_val=1000`` and ``batch_size=25`` as theirs.
- ``layers="conv"`` hooks every Conv2d and rectifies its output: their VGG/CaffeNet blobs are conv+ReLU.
  ``relu`` hooks the activation modules instead (useful where BatchNorm sits between conv and ReLU).
- No augmentation of the prior images (they randomly flip, rotate, rescale and blur), and perturbed inputs of
  the ``range``/``data`` priors are clipped to [0, 1] as at evaluation (they never clip).

Queries: every fitting step costs one forward+backward row per image in the batch (plus a clean forward
row per image for ``divergence``), every validation ``n_val`` rows (plus ``n_val`` once for the clean
predictions); the total is ``fit_queries``. Applying δ costs one query per attacked image.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from advsuite.configs import to_plain
from advsuite.errors import ConfigError
from advsuite.models.classifier import Classifier
from advsuite.seeding import make_generator
from advsuite.validation import check_choice, check_int, check_number

from .base import DEFAULT_EPS, UniversalAttack, linf_radius

OBJECTIVES = ("activations", "divergence")
PRIORS = ("none", "range", "data")
NOISES = ("gaussian", "uniform")
VALIDATIONS = ("auto", "range", "heldout", "off")
LAYER_PRESETS = ("auto", "conv", "relu", "logits")
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU)


# ----------------------------------------------------------------------------------- layers and objective


@dataclass
class LayerSelection:
    """The hooked modules (with whether to rectify their output) and whether the logits are a layer too."""

    modules: list[tuple[str, nn.Module, bool]]
    logits: bool


def select_layers(net: nn.Module, layers: str | Sequence[str]) -> LayerSelection:
    """Resolve ``conv`` / ``relu`` / ``logits`` or a list of module names of ``net`` (``logits`` allowed in it)."""
    named = dict(net.named_modules())
    if layers == "conv":
        chosen: list[tuple[str, nn.Module, bool]] = [
            (n, m, True) for n, m in named.items() if isinstance(m, nn.modules.conv._ConvNd)
        ]
        selection = LayerSelection(chosen, logits=False)
    elif layers == "relu":
        selection = LayerSelection([(n, m, False) for n, m in named.items() if isinstance(m, ACTIVATIONS)], False)
    elif layers == "logits":
        selection = LayerSelection([], logits=True)
    else:
        names = [layers] if isinstance(layers, str) else list(layers)
        unknown = [n for n in names if n != "logits" and (n not in named or n == "")]
        if unknown:
            known = ", ".join(n for n in named if n) or "(none)"
            raise ConfigError(f"layers {unknown} are not modules of the network; its modules: {known}")
        selection = LayerSelection([(n, named[n], False) for n in names if n != "logits"], "logits" in names)
    if not selection.modules and not selection.logits:
        raise ConfigError(f"layers={layers!r} selects no layer of this network; name its modules or use logits")
    return selection


@contextmanager
def recording(selection: LayerSelection) -> Iterator[list[torch.Tensor]]:
    """Forward hooks that append each selected module's output to the yielded list (per forward pass)."""
    outputs: list[torch.Tensor] = []

    def hook(rectify: bool) -> Callable[[nn.Module, Any, Any], None]:
        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                # clone: an in-place op after the module (ReLU(inplace=True)) must not change what we saved
                outputs.append(F.relu(output) if rectify else output.clone())

        return record

    handles = [module.register_forward_hook(hook(rectify)) for _, module, rectify in selection.modules]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def layer_features(
    model: Classifier, x: torch.Tensor, selection: LayerSelection, outputs: list[torch.Tensor]
) -> list[torch.Tensor]:
    """One forward pass of ``model`` on ``x``: the selected layers' outputs (hooks from :func:`recording`)."""
    outputs.clear()
    logits = model(x)
    features = list(outputs)
    if selection.logits:
        features.append(logits)
    return features


def log_energy(features: Sequence[torch.Tensor], reference: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """``Σ_l log(½ ‖f_l‖²)``, or of ``f_l − reference_l``: the quantity both objectives maximise."""
    total = torch.zeros((), device=features[0].device)
    for i, f in enumerate(features):
        diff = f if reference is None else f - reference[i]
        total = total + torch.log((0.5 * diff.float().pow(2).sum()).clamp_min(torch.finfo(torch.float32).tiny))
    return total


def activation_objective(
    model: Classifier,
    x: torch.Tensor,
    delta: torch.Tensor,
    layers: str | Sequence[str] = "conv",
    *,
    clip: bool = True,
) -> float:
    """GD-UAP's objective ``Σ_l log(½ ‖f_l(clip(x + δ))‖²)`` for a batch (higher = stronger activations).

    ``clip=False`` measures it as the ``none`` prior optimises it, on the unclipped ``x + δ``.
    """
    selection = select_layers(model.net, layers)
    inputs = x.to(model.device) + delta.to(model.device)
    inputs = inputs.clamp(*model.bounds) if clip else inputs
    # unclipped inputs (the ``none`` prior's) may leave the bounds on purpose; clipped ones are checked
    with ExitStack() as stack:
        if not clip:
            stack.enter_context(model.trusted_inputs())
        with torch.no_grad(), model.evaluating(), recording(selection) as outputs:
            return float(log_energy(layer_features(model, inputs, selection, outputs)))


# ----------------------------------------------------------------------------------- the attack


@dataclass
class UAPDataFree(UniversalAttack):
    """Data-free universal perturbation: GD-UAP (Mopuri et al. TPAMI 2018) or feature divergence (Huan et al. 2020)."""

    eps: float = DEFAULT_EPS
    objective: str = "activations"
    prior: str = "none"
    #: auto (conv for activations, logits for divergence) | conv | relu | logits | a list of module names
    layers: Any = "auto"
    noise: str = "gaussian"
    #: Adam learning rate in [0, 1] pixel units; None = eps / 100 (the authors' 0.1 at ξ = 10 on 0-255)
    lr: float | None = None
    max_iter: int = 2000
    batch_size: int = 25
    validation: str = "auto"
    val_every: int = 200
    n_val: int = 1000
    patience: int = 5
    #: training images the data prior fits on
    n_images: int = 2000
    saturation: float = 0.5
    saturation_change: float = 1e-5

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        check_choice(owner, "objective", self.objective, OBJECTIVES)
        check_choice(owner, "prior", self.prior, PRIORS)
        check_choice(owner, "noise", self.noise, NOISES)
        check_choice(owner, "validation", self.validation, VALIDATIONS)
        layers = to_plain(self.layers)
        if isinstance(layers, list):
            if not layers or not all(isinstance(n, str) for n in layers):
                raise ConfigError(f"{owner}: layers must be a non-empty list of module names, got {layers!r}")
        elif layers not in LAYER_PRESETS:
            raise ConfigError(
                f"{owner}: layers must be one of {list(LAYER_PRESETS)} or a list of module names, got {layers!r}"
            )
        self.layers = layers
        check_number(owner, "lr", self.lr)
        for name in ("max_iter", "batch_size", "val_every", "n_val", "patience", "n_images"):
            check_int(owner, name, getattr(self, name), 1)
        check_number(owner, "saturation", self.saturation, strict=False)
        check_number(owner, "saturation_change", self.saturation_change, strict=False)
        if self.saturation > 1:
            raise ConfigError(f"{owner}: saturation is a fraction of δ's entries in [0, 1], got {self.saturation!r}")

    @property
    def resolved_layers(self) -> str | list[str]:
        if self.layers == "auto":
            return "conv" if self.objective == "activations" else "logits"
        return self.layers

    @property
    def resolved_validation(self) -> str:
        if self.validation == "auto":
            return "heldout" if self.prior == "data" else "range"
        return self.validation

    def training_images_needed(self) -> int:
        held_out = self.n_val if self.resolved_validation == "heldout" else 0
        return held_out + (self.n_images if self.prior == "data" else 0)

    # ------------------------------------------------------------------------------------ inputs

    def range_images(self, model: Classifier, n: int, gen: torch.Generator) -> torch.Tensor:
        """Range-prior images: ``n`` noise images in the model's bounds."""
        shape = (n, *model.input_shape)
        low, high = model.bounds
        if self.noise == "uniform":
            return low + (high - low) * torch.rand(shape, generator=gen, device=model.device)
        mean = model.mean if model.normalized else torch.full_like(model.mean, (low + high) / 2)
        std = torch.minimum(mean - low, high - mean) / 2
        return (mean + std * torch.randn(shape, generator=gen, device=model.device)).clamp(low, high)

    def _source(self, model: Classifier, gen: torch.Generator) -> Callable[[], torch.Tensor]:
        """The prior: a function giving the next batch of ``x``."""
        if self.prior == "none":
            zero = model.mean.expand(1, *model.input_shape).clone()  # the normalised input's zero
            return lambda: zero
        if self.prior == "range":
            return lambda: self.range_images(model, self.batch_size, gen)
        images = self.training_images()[0]
        held_out = self.n_val if self.resolved_validation == "heldout" else 0
        pool = images[held_out : held_out + self.n_images].to(model.device)
        picker = make_generator(self.seed + 2)  # indices on the CPU: the same batches on every device
        return lambda: pool[torch.randint(len(pool), (self.batch_size,), generator=picker).to(model.device)]

    def _validation_images(self, model: Classifier) -> torch.Tensor | None:
        mode = self.resolved_validation
        if mode == "off":
            return None
        if mode == "range":
            return self.range_images(model, self.n_val, make_generator(self.seed + 1, model.device))
        return self.training_images()[0][: self.n_val]

    # ------------------------------------------------------------------------------------ the loop

    def fit(self, model: Classifier) -> tuple[torch.Tensor, dict[str, Any]]:
        radius = linf_radius(self.eps)
        gen = make_generator(self.seed, model.device)
        selection = select_layers(model.net, self.resolved_layers)
        source = self._source(model, gen)
        v = ((2 * torch.rand((1, *model.input_shape), generator=gen, device=model.device) - 1) * radius).requires_grad_(
            True
        )
        optimizer = torch.optim.Adam([v], lr=self.lr if self.lr is not None else self.eps / 100)
        tracker = _BestOnValidation(model, self._validation_images(model), self.batch_size * 8, v, radius)
        state = _Ascent(queries=tracker.queries)
        bar = tqdm(range(self.max_iter), desc=f"GD-UAP ({self.prior} prior)", disable=not self.verbose, leave=False)
        with recording(selection) as outputs:
            for _ in bar:
                state.iterations += 1
                self._ascent_step(model, v, optimizer, source(), selection, outputs, radius, state)
                stalled = state.saturation_stalled(v, radius, self.saturation, self.saturation_change)
                state.since_check += 1
                # validate every val_every steps, and before a rescale once half a period has passed
                due = state.since_check >= self.val_every or (stalled and 2 * state.since_check > self.val_every)
                if tracker.active and due:
                    state.since_check = 0
                    if tracker.check(v, self.patience):
                        state.stopped = True
                        break
                    bar.set_postfix(val_fooling=f"{tracker.best_rate:.3f}", saturated=f"{state.saturated:.2f}")
                if stalled:  # the authors' rescale: halve v, restart the validation clock
                    with torch.no_grad():
                        v.mul_(0.5)
                    state.rescales += 1
                    state.since_check = 0
        # the iterations after the last validation count too
        best = tracker.finish(v, validate_last=not state.stopped and state.since_check > 0)
        info = {
            "queries": state.queries + tracker.queries - tracker.initial_queries,
            "iterations": state.iterations,
            "rescales": state.rescales,
            "stopped_early": state.stopped,
            "validation": self.resolved_validation,
            "best_val_fooling_rate": tracker.best_rate_or_none,
            "final_saturation": state.saturated,
            "objective": self.objective,
            "prior": self.prior,
            "layers": self.resolved_layers,
        }
        return best, info

    def _ascent_step(
        self,
        model: Classifier,
        v: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        x: torch.Tensor,
        selection: Any,
        outputs: Any,
        radius: float,
        state: _Ascent,
    ) -> None:
        """One Adam step raising the layers' log-energy (or their divergence from the clean input's)."""
        clip = self.prior != "none"  # "none" feeds δ alone, as the authors; real images are kept in bounds
        inputs = x + v.clamp(-radius, radius)
        reference = None
        if self.objective == "divergence":
            if state.clean_cache is None or self.prior != "none":  # the none prior's clean input never changes
                with torch.no_grad():
                    state.clean_cache = [f.detach() for f in layer_features(model, x, selection, outputs)]
                state.queries += len(x)
            reference = state.clean_cache
        features = layer_features(model, inputs.clamp(*model.bounds) if clip else inputs, selection, outputs)
        loss = -log_energy(features, reference)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state.queries += len(x)


@dataclass
class _Ascent:
    """The optimisation's running state: counters, the saturation of δ, the divergence's clean features."""

    queries: int = 0
    iterations: int = 0
    rescales: int = 0
    since_check: int = 0
    stopped: bool = False
    saturated: float = 0.0
    saturated_before: float = 0.0
    clean_cache: list[torch.Tensor] | None = None

    def saturation_stalled(self, v: torch.Tensor, radius: float, level: float, change: float) -> bool:
        """GD-UAP's rescale test: most of δ sits at the radius and that share has stopped moving."""
        with torch.no_grad():
            self.saturated = float((v.clamp(-radius, radius).abs() >= radius).float().mean())
        stalled = self.saturated > level and abs(self.saturated - self.saturated_before) < change
        self.saturated_before = self.saturated
        return stalled


class _BestOnValidation:
    """Keeps the δ with the best fooling rate on held-out images (none: the last δ counts)."""

    def __init__(
        self, model: Classifier, val_x: torch.Tensor | None, batch_size: int, v: torch.Tensor, radius: float
    ) -> None:
        self.model, self.val_x, self.batch_size, self.radius = model, val_x, batch_size, radius
        self.best = v.detach().clamp(-radius, radius)
        self.best_rate, self.bad, self.queries = -math.inf, 0, 0
        self.clean: torch.Tensor | None = None
        if val_x is not None:
            self.clean = model.predict(val_x, batch_size)
            self.queries += len(val_x)
        self.initial_queries = self.queries

    @property
    def active(self) -> bool:
        return self.val_x is not None

    @property
    def best_rate_or_none(self) -> float | None:
        return None if self.best_rate == -math.inf else self.best_rate

    def _rate(self, delta: torch.Tensor) -> float:
        assert self.val_x is not None and self.clean is not None
        adv = self.model.predict((self.val_x + delta.to(self.val_x.device)).clamp(*self.model.bounds), self.batch_size)
        self.queries += len(self.val_x)
        return float((adv != self.clean).float().mean())

    def check(self, v: torch.Tensor, patience: int) -> bool:
        """Validate the current δ; True when ``patience`` checks in a row brought no improvement."""
        current = v.detach().clamp(-self.radius, self.radius)
        rate = self._rate(current)
        if rate > self.best_rate:
            self.best, self.best_rate, self.bad = current.clone(), rate, 0
        else:
            self.bad += 1
        return self.bad >= patience

    def finish(self, v: torch.Tensor, *, validate_last: bool) -> torch.Tensor:
        final = v.detach().clamp(-self.radius, self.radius)
        if not self.active:
            return final
        if validate_last and (rate := self._rate(final)) > self.best_rate:
            self.best, self.best_rate = final.clone(), rate
        return self.best

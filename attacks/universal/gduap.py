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

from ..checks import check_choice, check_int, check_number
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
        dev = model.device
        radius = linf_radius(self.eps)
        gen = make_generator(self.seed, dev)
        selection = select_layers(model.net, self.resolved_layers)
        source = self._source(model, gen)
        clip = self.prior != "none"  # "none" feeds δ alone, as the authors; real images are kept in bounds
        v = ((2 * torch.rand((1, *model.input_shape), generator=gen, device=dev) - 1) * radius).requires_grad_(True)
        optimizer = torch.optim.Adam([v], lr=self.lr if self.lr is not None else self.eps / 100)

        val_x = self._validation_images(model)
        queries = 0
        clean_val: torch.Tensor | None = None
        if val_x is not None:
            clean_val = model.predict(val_x, self.batch_size * 8)
            queries += len(val_x)

        def validate(delta: torch.Tensor) -> float:
            assert val_x is not None and clean_val is not None
            adv = model.predict((val_x + delta.to(val_x.device)).clamp(*model.bounds), self.batch_size * 8)
            return float((adv != clean_val).float().mean())

        best = v.detach().clamp(-radius, radius)
        best_rate, bad, since_check, rescales, stopped = -math.inf, 0, 0, 0, False
        saturated_before, saturated, iterations = 0.0, 0.0, 0
        clean_cache: list[torch.Tensor] | None = None
        bar = tqdm(range(self.max_iter), desc=f"GD-UAP ({self.prior} prior)", disable=not self.verbose, leave=False)
        with recording(selection) as outputs:
            for _ in bar:
                iterations += 1
                x = source()
                delta = v.clamp(-radius, radius)
                inputs = x + delta
                reference = None
                if self.objective == "divergence":
                    if clean_cache is None or self.prior != "none":  # the none prior's clean input never changes
                        with torch.no_grad():
                            clean_cache = [f.detach() for f in layer_features(model, x, selection, outputs)]
                        queries += len(x)
                    reference = clean_cache
                features = layer_features(model, inputs.clamp(*model.bounds) if clip else inputs, selection, outputs)
                loss = -log_energy(features, reference)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                queries += len(x)

                with torch.no_grad():
                    saturated = float((v.clamp(-radius, radius).abs() >= radius).float().mean())
                stalled = saturated > self.saturation and abs(saturated - saturated_before) < self.saturation_change
                saturated_before = saturated
                since_check += 1
                # validate every val_every steps, and before a rescale once half a period has passed
                due = since_check >= self.val_every or (stalled and 2 * since_check > self.val_every)
                if val_x is not None and due:
                    since_check = 0
                    current = v.detach().clamp(-radius, radius)
                    rate = validate(current)
                    queries += len(val_x)
                    if rate > best_rate:
                        best, best_rate, bad = current.clone(), rate, 0
                    else:
                        bad += 1
                    bar.set_postfix(val_fooling=f"{best_rate:.3f}", saturated=f"{saturated:.2f}")
                    if bad >= self.patience:
                        stopped = True
                        break
                if stalled:  # the authors' rescale: halve v, restart the validation clock
                    with torch.no_grad():
                        v.mul_(0.5)
                    rescales += 1
                    since_check = 0

        final = v.detach().clamp(-radius, radius)
        if val_x is None:
            best = final
        elif not stopped and since_check > 0:  # the iterations after the last validation count too
            rate = validate(final)
            queries += len(val_x)
            if rate > best_rate:
                best, best_rate = final.clone(), rate
        info = {
            "queries": queries,
            "iterations": iterations,
            "rescales": rescales,
            "stopped_early": stopped,
            "validation": self.resolved_validation,
            "best_val_fooling_rate": None if best_rate == -math.inf else best_rate,
            "final_saturation": saturated,
            "objective": self.objective,
            "prior": self.prior,
            "layers": self.resolved_layers,
        }
        return best, info

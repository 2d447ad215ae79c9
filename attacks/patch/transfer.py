"""Transferable patches on a generative manifold (``attack=patch_gan``), and their pixel-space counterpart.

Xiao, Gao, Fu, Dong, Gao, Zhang, Zhou, Zhu, "Improving Transferability of Adversarial Patches on Face
Recognition with Generative Models", CVPR 2021 (arXiv 2106.15058). Optimiser pieces: MI-FGSM (Dong et al.,
CVPR 2018), diverse inputs DI (Xie et al., CVPR 2019), translation invariance TI (Dong et al., CVPR 2019).

The patch is optimised on an ensemble of surrogate models and then used, unchanged, on the victim (a black
box: the attack only sees the victim's top-1 label on the final images, one query per image). Per step, on a
batch of training images:

    p      = G(w)                         (space: latent; the patch lies on the generator's output manifold)
           | p                            (space: pixel; the counterpart with the same optimiser)
    x'     = DI( A(p, x, l, t) )          EOT placement (location, scale, rotation), then random resize + pad
    J      = mean_k  L_k(x')              CE of the label (untargeted) or −CE of the target, per surrogate k
    ∇p     = TI( ∂J/∂p )                  Gaussian smoothing of the patch gradient
    ∇      = ∇p  (pixel)  or  (∂p/∂w)ᵀ ∇p  (latent)
    g      = μ·g + ∇ / mean|∇|            momentum (MI-FGSM)
    w or p ← clip(· + α·sign(g))          latent box [−latent_bound, latent_bound], pixels [0, 1]

``x_adv`` pastes the final patch on each test image at a seeded random position, as
:class:`~advsuite.attacks.patch.AdversarialPatch` does; ``extra_metrics`` reports ``patch_success`` on the
victim and ``surrogate_success@<name>``, the surrogates' white-box success on the same images (those of them
the surrogate classifies correctly). Running both
spaces with the same seed, surrogates and targets gives the pixel-vs-manifold transfer comparison.

Defaults and where they differ from the paper:

- G is a VAE decoder trained by the suite on random crops of the dataset's training images
  (:mod:`.generator`), not a StyleGAN pre-trained on faces; the latent is the decoder's input z (not W+) and is
  kept in a box of ±``latent_bound`` (3 prior standard deviations) so that G(w) stays where G was trained.
- the latent starts from a seeded sample z ~ N(0, I), the pixel patch from seeded uniform noise.
- the patch goes anywhere in the image under EOT (classification data has no facial regions); ``size`` is a
  fraction of the image area.
- surrogates ``auto``: two cheap zoo architectures other than the victim's (from ``smallcnn``, ``resnet18``,
  ``cifarcnn``), trained for 3 epochs, as the suite's priors pick their references; losses are averaged over
  surrogates (Dong et al. average logits; on two models the difference is small).
- DI: shrink to a factor in [0.9, 1) and zero-pad back, probability 0.5 (Xie et al.: 299 → [299, 330) then
  pad to 330, ≈ 0.9); TI: a 3 × 3 Gaussian (σ = 1 px) on the patch gradient (Dong et al.: 15 × 15 on 299-px
  images, far larger than a 9-pixel patch); μ = 1 as MI-FGSM; 200 steps of 32 images.

Queries: fitting costs one forward+backward pass per surrogate per training image per step (the metric
``patch_fit_queries`` and ``extras["fit_queries"]``); the victim is queried once per test image (the
success check), which is the per-sample ``queries``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from advsuite.attack import Access, PrepareContext
from advsuite.configs import to_plain
from advsuite.errors import ConfigError
from advsuite.models.classifier import Classifier
from advsuite.models.surrogates import SURROGATE_RECIPE, surrogate_names
from advsuite.oracles import LabelOracle
from advsuite.seeding import make_generator
from advsuite.validation import check_choice, check_int

from .base import UniversalPatchAttack, objective, training_images
from .generator import PatchVAE, load_patch_generator, resolve_settings
from .placement import gaussian_smoothing, input_diversity
from .transfer_steps import TransferSteps

SPACES = ("latent", "pixel")
DEFAULT_STEP = {"pixel": 0.01, "latent": 0.05}
#: training images kept aside (fixed placements) to measure the surrogate objective before and after fitting
PROBE_IMAGES = 256


def resolve_surrogates(surrogates: Any, victim_arch: str | None) -> list[Any]:
    """``auto``: two cheap zoo architectures other than the victim's; a list may not hold the victim's."""
    why = "a transfer attack uses other architectures only (it would leak white-box knowledge of the victim)"
    return surrogate_names(surrogates, victim_arch, key="attack.surrogates", why=why)


@dataclass
class TransferPatch(UniversalPatchAttack, TransferSteps):
    """Xiao et al.'s transferable patch: G(w) (``space: latent``) or pixels, MI + DI + TI over surrogates."""

    access: ClassVar[Access] = "label"

    space: str = "latent"
    surrogates: Any = "auto"
    #: merged into the zoo's default recipe when a surrogate has to be trained
    surrogate_recipe: Any = field(default_factory=lambda: dict(SURROGATE_RECIPE))
    steps: int = 200
    batch_size: int = 32
    #: the patch generator's settings (see :data:`advsuite.attacks.patch.generator.GENERATOR_DEFAULTS`)
    generator: Any = None

    _data: Any = field(default=None, init=False, repr=False, compare=False)
    _train: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, init=False, repr=False, compare=False)
    _models: list[Classifier] = field(default_factory=list, init=False, repr=False, compare=False)
    _generators: dict[int, PatchVAE] = field(default_factory=dict, init=False, repr=False, compare=False)
    #: the optimised latent of each latent-space patch, ``(side, target)`` -> w
    latents: dict[Any, torch.Tensor] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        check_choice(owner, "space", self.space, SPACES)
        check_int(owner, "steps", self.steps, 1)
        self.check_transfer_steps(owner)  # step_size null: 0.01 (pixel) or 0.05 (latent)
        self.surrogate_recipe = dict(to_plain(self.surrogate_recipe) or {})
        self.generator = resolve_settings(self.generator)

    @property
    def alpha(self) -> float:
        return float(self.step_size) if self.step_size is not None else DEFAULT_STEP[self.space]

    # ------------------------------------------------------------------------------------- set-up

    def prepare(self, context: PrepareContext) -> None:
        """Load (or train) the surrogates from the zoo and, for ``space: latent``, the patch generators."""
        from advsuite.models.surrogates import load_references

        self._data, self._train = context.data, None
        names = resolve_surrogates(self.surrogates, context.victim_arch)
        models = load_references(
            names,
            context.data,
            device=context.device,
            cache_dir=context.cache_dir,
            seed=context.seed,
            verbose=context.verbose,
            recipe_overrides=self.surrogate_recipe,
        )
        generators = []
        if self.space == "latent":
            for size in self.sizes:
                side = self.side(size, context.data.input_shape)
                generators.append(
                    load_patch_generator(
                        context.data,
                        side,
                        self.generator,
                        cache_dir=context.cache_dir,
                        seed=context.seed,
                        device=context.device,
                        verbose=context.verbose,
                    )
                )
        self.attach(models, generators=generators)

    def attach(
        self,
        surrogates: Sequence[Classifier],
        x_train: torch.Tensor | None = None,
        y_train: torch.Tensor | None = None,
        *,
        generators: Sequence[PatchVAE] = (),
    ) -> None:
        """Python API: use these surrogate models, training images and generators (one per patch side)."""
        if not surrogates:
            raise ConfigError(f"{type(self).__name__}: needs at least one surrogate model")
        self._models = list(surrogates)
        self._generators = {int(g.input_shape[-1]): g.eval() for g in generators}
        if x_train is not None and y_train is not None:
            self._train = (x_train, y_train)
        self._cache.clear()
        self.latents.clear()

    def _train_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._train is None:
            if self._data is None:
                raise ConfigError(
                    f"{type(self).__name__}: no training data; call attack.prepare(PrepareContext(...)) or "
                    "attack.attach(surrogates, x_train, y_train, generators=...)"
                )
            self._train = training_images(self._data, self.n_train, self.seed)
        return self._train

    # ------------------------------------------------------------------------------------- fitting

    def fit(self, size: float | None = None, target: int | None = None) -> torch.Tensor:
        """The patch (C, s, s) in [0, 1] for ``size`` (default: the largest) and goal class ``target``."""
        if not self._models:
            raise ConfigError(f"{type(self).__name__}: no surrogates; call prepare() or attach() first")
        return self._patch(None, self.sizes[-1] if size is None else float(size), target)

    def _patch(self, model: Any, size: float, target: int | None) -> torch.Tensor:
        if not self._models:
            raise ConfigError(f"{type(self).__name__}: no surrogates; call prepare() or attach() first")
        side = self.side(size, self._models[0].input_shape)
        if (side, target) not in self._cache:
            x, y = self._train_subset(*self._train_data(), target)
            self._cache[(side, target)] = self._fit(x, y, side, target)
        return self._cache[(side, target)]

    def surrogate_objective(
        self, patch: torch.Tensor, x: torch.Tensor, labels: torch.Tensor, targeted: bool, seed: int
    ) -> float:
        """Mean surrogate objective (the value the fit maximises, without DI) under seeded placements."""
        device = self._models[0].device
        gen = make_generator(seed, device)
        with torch.no_grad():
            placed = self.eot(x.to(device), patch.to(device), gen)
            values = [objective(m(placed), labels.to(device), targeted).mean() for m in self._models]
        return float(torch.stack(values).mean())

    def _fit(self, x: torch.Tensor, y: torch.Tensor, side: int, target: int | None) -> torch.Tensor:
        device = self._models[0].device
        c = self._models[0].input_shape[0]
        targeted = target is not None
        init = make_generator(self.seed)
        g: PatchVAE | None = None
        if self.space == "latent":
            if side not in self._generators:
                raise ConfigError(
                    f"{type(self).__name__}: no generator for {side}-pixel patches; prepare() or attach()"
                )
            g = self._generators[side].to(device).eval()
            var = torch.randn(g.latent_shape, generator=init).clamp(-self.latent_bound, self.latent_bound).to(device)
            low, high = -self.latent_bound, self.latent_bound
        else:
            var = torch.rand(c, side, side, generator=init).to(device)
            low, high = 0.0, 1.0

        def render(v: torch.Tensor) -> torch.Tensor:
            return g.decode(v[None])[0] if g is not None else v

        probe = torch.arange(min(PROBE_IMAGES, len(x)))
        probe_labels = torch.full((len(probe),), target) if target is not None else y[probe]
        start_value = self.surrogate_objective(render(var).detach(), x[probe], probe_labels, targeted, self.seed + 7)

        order, gen = make_generator(self.seed + 1), make_generator(self.seed + 1, device)
        momentum = torch.zeros_like(var)
        trace: list[float] = []
        start = time.perf_counter()
        with ExitStack() as stack, torch.enable_grad():
            for m in self._models:  # every composite is clipped to [0, 1]
                stack.enter_context(m.trusted_inputs())
                stack.enter_context(m.evaluating())
            for _ in range(self.steps):
                batch = torch.randint(len(x), (min(self.batch_size, len(x)),), generator=order)
                xb = x[batch].to(device)
                labels = (torch.full((len(batch),), target) if target is not None else y[batch]).to(device)
                v = var.detach().requires_grad_(True)
                patch = render(v)
                placed = input_diversity(self.eot(xb, patch, gen), gen, prob=self.di_prob, low=self.di_low)
                value = torch.stack([objective(m(placed), labels, targeted).mean() for m in self._models]).mean()
                (grad_p,) = torch.autograd.grad(value, patch, retain_graph=self.space == "latent")
                grad_p = gaussian_smoothing(grad_p, self.ti_kernel, self.ti_sigma)
                grad = torch.autograd.grad(patch, v, grad_outputs=grad_p)[0] if self.space == "latent" else grad_p
                momentum = self.accumulate(momentum, grad)
                var = (var + self.alpha * momentum.sign()).clamp(low, high)
                trace.append(float(value.detach()))
        with torch.no_grad():
            patch = render(var).detach().clamp(0, 1)
        if self.space == "latent":
            self.latents[(side, target)] = var.detach()
        self.fit_log[(side, target)] = {
            "queries": self.steps * min(self.batch_size, len(x)) * len(self._models),
            "objective_trace": trace,
            "objective_start": start_value,
            "objective_end": self.surrogate_objective(patch, x[probe], probe_labels, targeted, self.seed + 7),
            "seconds": time.perf_counter() - start,
        }
        return patch

    # ------------------------------------------------------------------------------------- attack

    def _labels(self, target: LabelOracle, x_adv: torch.Tensor) -> torch.Tensor:
        return target(x_adv)[0]

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
        """The base metrics on the victim, plus ``surrogate_success@<name>`` on the same patched images."""
        out = super().extra_metrics(model, x, y, x_adv, attacked, targets=targets, batch_size=batch_size)
        goal, eligible = self.goal(y, targets)
        idx = (attacked & eligible).nonzero().squeeze(1)
        for i, m in enumerate(self._models):
            name = str(m.info.get("arch") or m.name)
            name = f"{name}_{i}" if f"surrogate_success@{name}" in out else name
            # only images this surrogate gets right: otherwise its clean error would count as success
            own = idx[(m.predict(x[idx], batch_size) == y[idx]).cpu()] if len(idx) else idx
            rate = self._hit_rate(m, x_adv[own], y[own], None if goal is None else goal[own], batch_size)
            out[f"surrogate_success@{name}"] = rate if len(own) else None
        return out

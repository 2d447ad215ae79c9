"""Transferable face-verification patches (``task=face``, options under ``face_attack.``).

Xiao, Gao, Fu, Dong, Gao, Zhang, Zhou, Zhu, "Improving Transferability of Adversarial Patches on Face
Recognition with Generative Models", CVPR 2021 (arXiv 2106.15058). A face-verification model f maps a face to
an embedding; two faces match when the cosine similarity of their embeddings reaches the model's threshold
τ, fixed at a false-accept rate (FAR) on clean pairs. The attacker pastes a patch on a facial region of the
source face x, optimising it on surrogate embedders only; the held-out victim embedders are black boxes.

- ``mode: dodging``: x should stop matching another photo of its own identity: minimise
  J = mean_k cos(f_k(x'), f_k(x_enrol)); success when the victim's similarity falls below τ.
- ``mode: impersonation``: x should match a photo of a target identity: minimise J = −mean_k cos(f_k(x'),
  f_k(x_target)); success when the victim's similarity reaches τ.

Per step, for a batch of pairs (one patch per pair, as the paper attacks pairs):

    p   = G(w)                 (space: latent; the whole face generated, then cut to the region)
        | p                    (space: pixel; the counterpart with the same optimiser)
    x'  = M ⊙ p + (1 − M) ⊙ x  M: the facial-region mask (eyes, nose, forehead, respirator, or a box)
    J   = mean_k L_k(DI(x'))   diverse inputs (Xie et al.): random shrink and pad, probability di_prob
    ∇p  = TI(∂J/∂p)            translation invariance (Dong et al.): Gaussian smoothing of the gradient
    ∇   = ∇p or (∂p/∂w)ᵀ∇p     through the generator for the latent space
    g   = μ·g + ∇/mean|∇|      momentum (MI-FGSM)
    w or p ← clip(· − α·sign(g))

Where this differs from the paper: G is a VAE decoder (:class:`~advsuite.attacks.patch.generator.PatchVAE`)
trained on the dataset's training-identity faces, not a StyleGAN pre-trained on FFHQ, and w is its decoder
input (not W+); the latent starts from a seeded N(0, I) sample (``init: source`` starts from the source
face's own encoding) and stays in a box of ±``latent_bound``. Surrogates and victims are small networks
trained by the suite on the training identities (the paper uses FaceNet, CosFace, ArcFace and others). The
paper's physical-world EOT is not used: the attack is digital.

Queries: every surrogate forward+backward is counted (``fit_queries``); a victim is queried once per attacked
pair to judge success.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from advsuite.errors import ConfigError, InputError
from advsuite.seeding import make_generator
from advsuite.validation import check_choice, check_int

from ..patch.embedding import embed as raw_embeddings
from ..patch.generator import PatchVAE, resolve_settings
from ..patch.placement import gaussian_smoothing, input_diversity
from ..patch.transfer_steps import TransferSteps
from .regions import region_box, region_mask

MODES = ("dodging", "impersonation")
SPACES = ("latent", "pixel")
INITS = ("random", "source")
DEFAULT_STEP = {"pixel": 2 / 255, "latent": 0.05}


def embed(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Embeddings of ``x`` (eval mode, chunked, the model's mode restored), on the CPU, L2-normalised."""
    return F.normalize(raw_embeddings(model, x, batch_size), dim=1)


@dataclass
class FacePatch(TransferSteps):
    """Xiao et al.'s transferable face patch: G(w) (``space: latent``) or pixels, MI + DI + TI over surrogates."""

    mode: str = "dodging"
    #: a region of :data:`~advsuite.attacks.face.regions.REGIONS` or a box [top, left, bottom, right]
    region: Any = "eyes"
    space: str = "latent"
    #: surrogate embedders: zoo model names or inline specs (trained on the training identities), or
    #: ``{target: pkg.mod:factory, checkpoint: ...}`` embedding networks
    surrogates: Any = field(default_factory=lambda: ["smallcnn", "resnet18"])
    #: merged into the zoo's default recipe for every embedder the run has to train
    embedder_recipe: Any = field(default_factory=lambda: {"epochs": 15})
    steps: int = 100
    init: str = "random"
    #: the face generator's settings (:data:`~advsuite.attacks.patch.generator.GENERATOR_DEFAULTS`)
    generator: Any = None
    batch_size: int = 64
    seed: int = 0

    fit_queries: int = field(default=0, init=False, compare=False)

    @classmethod
    def options(cls) -> list[str]:
        """The options a config may set (every init field)."""
        return [f.name for f in fields(cls) if f.init]

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_choice(owner, "mode", self.mode, MODES)
        check_choice(owner, "space", self.space, SPACES)
        check_choice(owner, "init", self.init, INITS)
        region_box(self.region)
        check_int(owner, "steps", self.steps, 1)
        check_int(owner, "batch_size", self.batch_size, 1)
        self.check_transfer_steps(owner)  # step_size null: 2/255 (pixel) or 0.05 (latent)
        self.generator = resolve_settings(self.generator)  # checked now, before any embedder trains

    @property
    def alpha(self) -> float:
        return float(self.step_size) if self.step_size is not None else DEFAULT_STEP[self.space]

    def loss(self, emb: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """Per-pair value minimised: cos for dodging, −cos for impersonation."""
        cos = F.cosine_similarity(emb, ref, dim=1)
        return cos if self.mode == "dodging" else -cos

    def __call__(
        self,
        surrogates: Sequence[nn.Module],
        x: torch.Tensor,
        refs: Sequence[torch.Tensor],
        generator: PatchVAE | None = None,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Patched faces for sources ``x`` (N, C, H, W); ``refs[k]`` holds surrogate k's reference embedding per
        pair (the enrolment photo's for dodging, the target's for impersonation). Returns ``(x_adv, info)``."""
        if not surrogates or len(refs) != len(surrogates):
            raise InputError(f"need one reference tensor per surrogate, got {len(refs)} for {len(surrogates)}")
        if self.space == "latent" and generator is None:
            raise ConfigError("space=latent needs the face generator (task=face builds it)")
        if any(len(r) != len(x) for r in refs):
            raise InputError("every reference tensor needs one embedding per source image")
        if len(x) == 0:
            raise InputError("no source faces to attack")
        for model in surrogates:
            model.eval().requires_grad_(False)
        self.fit_queries = 0
        out, traces = [], []
        for index, start in enumerate(range(0, len(x), self.batch_size)):
            part = slice(start, start + self.batch_size)
            adv, trace = self._batch(surrogates, x[part], [r[part] for r in refs], generator, index)
            out.append(adv)
            traces.append(trace)
        steps = len(traces[0])
        history = [sum(t[i] * len(a) for t, a in zip(traces, out, strict=True)) / len(x) for i in range(steps)]
        return torch.cat(out), {"objective": history, "fit_queries": self.fit_queries}

    def _batch(
        self,
        surrogates: Sequence[nn.Module],
        x: torch.Tensor,
        refs: Sequence[torch.Tensor],
        generator: PatchVAE | None,
        index: int,
    ) -> tuple[torch.Tensor, list[float]]:
        device = x.device
        n, _, height, width = x.shape
        mask = region_mask(self.region, height, width, device)
        gen = make_generator(self.seed * 1_000_003 + index, device)  # one stream per (seed, batch)
        refs = [F.normalize(r.to(device).float(), dim=1) for r in refs]
        if self.space == "latent":
            assert generator is not None
            generator.eval().requires_grad_(False)
            if self.init == "source":
                var = generator.encode(x).clamp(-self.latent_bound, self.latent_bound)
            else:
                var = torch.randn((n, *generator.latent_shape), generator=gen, device=device)
                var = var.clamp(-self.latent_bound, self.latent_bound)
        else:
            var = x.clone() if self.init == "source" else torch.rand(x.shape, generator=gen, device=device)
        momentum = torch.zeros_like(var)
        trace = []
        for _ in range(self.steps):
            with torch.enable_grad():
                var.requires_grad_(True)
                patch = generator.decode(var) if generator is not None and self.space == "latent" else var
                patch_in = patch.detach().requires_grad_(True)
                x_p = mask * patch_in + (1 - mask) * x
                x_d = input_diversity(x_p, gen, prob=self.di_prob, low=self.di_low)
                value = torch.stack([self.loss(f(x_d), r) for f, r in zip(surrogates, refs, strict=True)]).mean(0)
                (grad_p,) = torch.autograd.grad(value.sum(), patch_in)
                # smoothed, then cut to the region again: pixels outside it do not reach the loss
                grad_p = gaussian_smoothing(grad_p * mask, self.ti_kernel, self.ti_sigma) * mask
                if patch is var:
                    grad = grad_p
                else:
                    (grad,) = torch.autograd.grad(patch, var, grad_outputs=grad_p)
            self.fit_queries += n * len(surrogates)
            trace.append(float(value.detach().mean()))
            momentum = self.accumulate(momentum, grad, per_sample=True)
            with torch.no_grad():
                var = var.detach() - self.alpha * momentum.sign()
                var = var.clamp(-self.latent_bound, self.latent_bound) if self.space == "latent" else var.clamp(0, 1)
        with torch.no_grad():
            patch = generator.decode(var) if generator is not None and self.space == "latent" else var
            return (mask * patch + (1 - mask) * x).clamp(0, 1), trace

"""Baselines for universal perturbations in the same Linf ball: data-dependent SGD-UAP and random noise.

SGD-UAP: Shafahi, Najibi, Xu, Dickerson, Davis, Goldstein, "Universal Adversarial Training", AAAI 2020
(arXiv 1812.03705), Algorithm 1; the problem is that of Moosavi-Dezfooli, Fawzi, Fawzi, Frossard,
"Universal adversarial perturbations", CVPR 2017. Over minibatches B of labelled training images,

    g ← ∇_δ  mean_{(x, y) ∈ B} min( CE(f(clip(x + δ)), y), β )
    δ ← clip( δ + α · sign(g), −ε, ε )

starting from δ = 0. The clamp at β (the paper's "clipped" loss) stops images that are already fooled
from dominating the minibatch gradient.

Defaults and where they differ from the paper: we take Linf steepest-ascent (sign) steps with
``α = rel_stepsize · ε`` decayed by ``step_decay`` after every epoch, where the paper's Algorithm 1 takes an
optimiser step with a learning rate; sign steps need no per-dataset tuning of the gradient scale. β = 9
(CE of 9 ≈ a true-class probability of 1e-4), ``epochs=5`` over ``n_images=2000`` training images and
``batch_size=64`` are our CPU-sized choices. The last δ is kept (no validation).

Random: δ with i.i.d. entries ``±ε`` (``distribution="sign"``, a corner of the ball, the strongest random
choice) or ``U[−ε, ε]`` (``"uniform"``), seeded. GD-UAP's "baseline" row is random noise in the same ball.

Queries: SGD-UAP spends one forward+backward row per training image per epoch (``fit_queries``); the
random baseline spends none. Applying δ costs one query per attacked image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from advsuite.models.classifier import Classifier
from advsuite.seeding import make_generator
from advsuite.validation import check_choice, check_int, check_number

from .base import DEFAULT_EPS, UniversalAttack, linf_radius

DISTRIBUTIONS = ("sign", "uniform")


@dataclass
class UAPSGD(UniversalAttack):
    """Data-dependent universal perturbation by minibatch sign-gradient ascent (SGD-UAP, Shafahi et al. 2020)."""

    eps: float = DEFAULT_EPS
    epochs: int = 5
    batch_size: int = 64
    n_images: int = 2000
    #: step size as a fraction of eps (first epoch)
    rel_stepsize: float = 0.1
    step_decay: float = 0.8
    #: the clipped loss min(CE, beta)
    beta: float = 9.0

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        for name in ("epochs", "batch_size", "n_images"):
            check_int(owner, name, getattr(self, name), 1)
        check_number(owner, "rel_stepsize", self.rel_stepsize)
        check_number(owner, "step_decay", self.step_decay)
        check_number(owner, "beta", self.beta)

    def training_images_needed(self) -> int:
        return self.n_images

    def fit(self, model: Classifier) -> tuple[torch.Tensor, dict[str, Any]]:
        images, labels = self.training_images()
        images, labels = images[: self.n_images], labels[: self.n_images]
        dev = model.device
        radius = linf_radius(self.eps)
        delta = torch.zeros((1, *model.input_shape), device=dev)
        gen = make_generator(self.seed)  # shuffles on the CPU: the same batches on every device
        step, queries, loss_value = self.rel_stepsize * self.eps, 0, float("nan")
        for _ in tqdm(range(self.epochs), desc="SGD-UAP", disable=not self.verbose, leave=False):
            for idx in torch.randperm(len(images), generator=gen).split(self.batch_size):
                x, y = images[idx].to(dev), labels[idx].to(dev)
                d = delta.clone().requires_grad_(True)
                ce = F.cross_entropy(model((x + d).clamp(*model.bounds)), y, reduction="none")
                loss = ce.clamp_max(self.beta).mean()
                (grad,) = torch.autograd.grad(loss, d)
                delta = (delta + step * grad.sign()).clamp(-radius, radius)
                queries += len(x)
                loss_value = float(loss.detach())
            step *= self.step_decay
        return delta, {"queries": queries, "epochs": self.epochs, "final_loss": loss_value}


@dataclass
class UAPRandom(UniversalAttack):
    """Random universal perturbation in the Linf ball (the sanity baseline of GD-UAP's tables)."""

    eps: float = DEFAULT_EPS
    distribution: str = "sign"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(type(self).__name__, "distribution", self.distribution, DISTRIBUTIONS)

    def fit(self, model: Classifier) -> tuple[torch.Tensor, dict[str, Any]]:
        radius = linf_radius(self.eps)
        gen = make_generator(self.seed, model.device)
        u = torch.rand((1, *model.input_shape), generator=gen, device=model.device)
        delta = torch.where(u < 0.5, -radius, radius) if self.distribution == "sign" else (2 * u - 1) * radius
        return delta.clamp(-radius, radius), {"queries": 0, "distribution": self.distribution}

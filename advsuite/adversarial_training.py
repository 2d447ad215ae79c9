"""Robust-training losses for the zoo's recipe (``train.adversarial``): one function per paper.

- ``pgd``: Madry, Makelov, Schmidt, Tsipras, Vladu, ICLR 2018: minimise CE on PGD examples (random start,
  ``adv_steps`` sign steps of ``adv_step_size``; default 2.5·ε/steps). The examples are made in train mode,
  as in the authors' code.
- ``trades``: Zhang, Yu, Jiao, Xing, El Ghaoui, Jordan, ICML 2019: CE(f(x), y) + β·KL(f(x) ‖ f(x′)), with x′
  maximising the KL from x + 0.001·N(0, 1) in eval mode (the authors' code; β = 6 their CIFAR-10 setting).
- ``fast``: Wong, Rice, Kolter, ICLR 2020 ("Fast is better than free"): one FGSM step of 1.25·ε from a
  uniform random start in the ε-ball. Their cyclic learning rate and early stopping are not reproduced: the
  recipe's own schedule applies.

Every loss returns the training loss, the logits the accuracy is counted on (adversarial ones for ``pgd`` and
``fast``, clean ones for ``trades``) and the clean and adversarial cross-entropy the progress bar shows. The
clean loss of ``pgd``/``fast`` is measured in eval mode without gradients, so monitoring does not change
batch-norm statistics or the weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from advsuite.training import Recipe

ADVERSARIAL = ("none", "pgd", "trades", "fast")
ADV_NORMS = ("linf", "l2")

Losses = tuple[torch.Tensor, torch.Tensor, float, float | None]


def _unit(g: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "linf":
        return g.sign()
    return g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (g.dim() - 1))


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        factor = (eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp_max(1.0)
        delta = delta * factor.view(-1, *[1] * (x.dim() - 1))
    return (x + delta).clamp(0, 1)


def _uniform_start(x: torch.Tensor, eps: float, norm: str, gen: torch.Generator) -> torch.Tensor:
    if norm == "linf":
        noise = (torch.rand(x.shape, generator=gen) * 2 - 1) * eps
    else:
        noise = torch.randn(x.shape, generator=gen)
        noise = noise / noise.flatten(1).norm(dim=1).view(-1, *[1] * (x.dim() - 1)) * eps
        noise = noise * torch.rand(len(x), generator=gen).pow(1 / x[0].numel()).view(-1, *[1] * (x.dim() - 1))
    return (x + noise.to(x.device, x.dtype)).clamp(0, 1)


def step_size(recipe: Recipe) -> float:
    """The inner attack's step: ``adv_step_size``, else 1.25·ε (fast) or 2.5·ε / steps (pgd, trades)."""
    if recipe.adv_step_size is not None:
        return float(recipe.adv_step_size)
    return 1.25 * recipe.adv_eps if recipe.adversarial == "fast" else 2.5 * recipe.adv_eps / recipe.adv_steps


def _ascend(x_adv: torch.Tensor, objective: torch.Tensor) -> torch.Tensor:
    (grad,) = torch.autograd.grad(objective, x_adv)
    return grad


@torch.no_grad()
def _clean_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    was = model.training
    model.eval()
    loss = float(F.cross_entropy(model(x).float(), y))
    model.train(was)
    return loss


def pgd_examples(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: Recipe, gen: torch.Generator, steps: int
) -> torch.Tensor:
    """PGD (CE, random start) in ``recipe.adv_norm`` with ``steps`` steps; ``steps=1`` with 1.25·ε is fast-AT."""
    eps, alpha, norm = recipe.adv_eps, step_size(recipe), recipe.adv_norm
    x_adv = _uniform_start(x, eps, norm, gen)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        grad = _ascend(x_adv, F.cross_entropy(model(x_adv).float(), y))
        x_adv = _project(x_adv.detach() + alpha * _unit(grad, norm), x, eps, norm)
    return x_adv.detach()


def trades_examples(model: nn.Module, x: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    """x′ maximising KL(f(x) ‖ f(x′)) in the ε-ball, from x + 0.001·N(0, 1), in eval mode (the authors' code)."""
    eps, alpha, norm = recipe.adv_eps, step_size(recipe), recipe.adv_norm
    was = model.training
    model.eval()
    with torch.no_grad():
        target = F.softmax(model(x).float(), 1)
    x_adv = (x + 0.001 * torch.randn_like(x)).clamp(0, 1)
    for _ in range(recipe.adv_steps):
        x_adv.requires_grad_(True)
        kl = F.kl_div(F.log_softmax(model(x_adv).float(), 1), target, reduction="sum")
        x_adv = _project(x_adv.detach() + alpha * _unit(_ascend(x_adv, kl), norm), x, eps, norm)
    model.train(was)
    return x_adv.detach()


def training_losses(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: Recipe, gen: torch.Generator, loss_fn: nn.Module
) -> Losses:
    """``(loss, logits, clean CE, adversarial CE or None)`` for one batch under ``recipe.adversarial``."""
    if recipe.adversarial == "none":
        logits = model(x)
        loss = loss_fn(logits.float(), y)
        return loss, logits, 0.0, None  # the loop sums the loss itself
    if recipe.adversarial == "trades":
        x_adv = trades_examples(model, x, recipe)
        logits, logits_adv = model(x), model(x_adv)
        clean = loss_fn(logits.float(), y)
        robust = F.kl_div(F.log_softmax(logits_adv.float(), 1), F.softmax(logits.float(), 1), reduction="batchmean")
        adv_ce = float(F.cross_entropy(logits_adv.detach().float(), y))
        return clean + recipe.trades_beta * robust, logits, float(clean.detach()), adv_ce
    steps = 1 if recipe.adversarial == "fast" else recipe.adv_steps
    x_adv = pgd_examples(model, x, y, recipe, gen, steps)
    logits = model(x_adv)
    loss = loss_fn(logits.float(), y)
    return loss, logits, _clean_loss(model, x, y), float(loss.detach())

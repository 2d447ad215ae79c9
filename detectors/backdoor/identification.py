"""Poisoning-target identification by influence (Hammoudeh and Lowd, *Identifying a Training-Set Attack's Target
Using Renormalized Influence Estimation*, CCS 2022).

Given a model caught misclassifying a (triggered) test input, rank the training samples by their influence on
that prediction; the poison should come first. Three estimators, each over the training checkpoints:

- ``tracin`` (Pruthi et al., NeurIPS 2020; TracInCP): ``Σ_t η_t ⟨∇ℓ(z; θ_t), ∇ℓ(z_te; θ_t)⟩``;
- ``gas`` (the paper's renormalised TracIn, gradient-aggregated similarity): the same sum of cosine
  similarities, ``⟨g, g_te⟩ / (‖g‖‖g_te‖)``, which removes the dominance of high-loss (large-gradient) samples;
- ``representer`` (Yeh et al., NeurIPS 2018), the final model only: ``α_i,ŷ · ⟨f_i, f_te⟩`` with ``f`` the
  penultimate representation and ``α_i,ŷ = 1[y_i = ŷ] − p_i,ŷ`` (the constant ``1/(2λn)`` dropped).

The test loss is taken at the label the model predicts. Target identification: the poison's target is the test
input whose influence distribution has the most anomalous upper tail. Our anomaly score (the paper's statistic
is not reproduced) is a robust z-score of the mean of the top 1% of influences: ``(mean(top) − median) /
(1.4826 · MAD)``; a candidate set of clean test inputs (one per class) and the triggered one are ranked by it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from advsuite.errors import ConfigError
from advsuite.models.classifier import Classifier

from .dataset import penultimate_features

METHODS = ("gas", "tracin", "representer")
#: bytes of per-sample gradients held at once
GRADIENT_BUDGET = 512 * 2**20


@dataclass
class Checkpoint:
    """Weights during training (of a :class:`Classifier`'s network, or of the plain module) and the learning rate
    they were trained with."""

    state: dict[str, torch.Tensor]
    lr: float


def _parameters(model: nn.Module, scope: str) -> dict[str, torch.Tensor]:
    net, _ = network(model)
    named = dict(net.named_parameters())
    if scope == "all":
        return {k: v.detach() for k, v in named.items()}
    if scope == "head":
        head = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
        ids = {id(p) for p in head.parameters()}
        return {k: v.detach() for k, v in named.items() if id(v) in ids}
    raise ConfigError(f"influence: params must be 'all' or 'head', got {scope!r}")


def network(model: nn.Module) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    """The module whose weights the gradients are of, and what maps images to its inputs: a Classifier's network
    and its normalisation (its forward's checks cannot run under vmap), else the module itself."""
    if isinstance(model, Classifier):
        return model.net, lambda x: (x - model.mean) / model.std if model.normalized else x
    return model, lambda x: x


def per_sample_gradients(
    model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """One flattened loss gradient per sample, with respect to ``params`` of :func:`network` (in eval mode)."""
    net, prepare = network(model)
    frozen = {k: v.detach() for k, v in net.named_parameters() if k not in params}
    buffers = dict(net.named_buffers())

    def loss(p: dict[str, torch.Tensor], zi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        logits = functional_call(net, ({**frozen, **p}, buffers), (zi.unsqueeze(0),))
        return F.cross_entropy(logits, yi.unsqueeze(0))

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, prepare(x), y)
    return torch.cat([g.flatten(1) for g in grads.values()], dim=1)


@torch.no_grad()
def checkpoint_influence(
    model: nn.Module,
    checkpoints: Sequence[Checkpoint],
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    params: str = "all",
) -> dict[str, torch.Tensor]:
    """``tracin`` and ``gas`` influence of every training sample on every test input: two (n_test, n_train)
    tensors. ``model`` is the architecture; its weights are restored afterwards."""
    if not checkpoints:
        raise ConfigError("influence over checkpoints needs at least one checkpoint (task.snapshots >= 1)")
    device = next(model.parameters()).device
    net, _ = network(model)
    original = {k: v.detach().clone() for k, v in net.state_dict().items()}
    was = model.training
    model.eval()
    tracin = torch.zeros(len(test_x), len(train_x), dtype=torch.float64)
    gas = torch.zeros_like(tracin)
    try:
        for ckpt in checkpoints:
            net.load_state_dict(ckpt.state)
            p = _parameters(model, params)
            size = sum(v.numel() for v in p.values())
            batch = max(1, min(512, GRADIENT_BUDGET // (4 * size)))
            with torch.enable_grad():
                pairs = zip(test_x.split(batch), test_y.split(batch), strict=True)
                g_te = torch.cat([per_sample_gradients(model, p, xb.to(device), yb.to(device)) for xb, yb in pairs])
            n_te = g_te.norm(dim=1).clamp_min(1e-12)
            for start in range(0, len(train_x), batch):
                xb, yb = train_x[start : start + batch].to(device), train_y[start : start + batch].to(device)
                with torch.enable_grad():
                    g = per_sample_gradients(model, p, xb, yb)
                dots = (g_te @ g.T).double().cpu()  # (n_test, batch)
                norms = g.norm(dim=1).clamp_min(1e-12).double().cpu()
                tracin[:, start : start + batch] += ckpt.lr * dots
                gas[:, start : start + batch] += ckpt.lr * dots / (n_te.double().cpu()[:, None] * norms[None, :])
    finally:
        net.load_state_dict(original)
        model.train(was)
    return {"tracin": tracin, "gas": gas}


@torch.no_grad()
def representer_influence(
    model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor
) -> torch.Tensor:
    """Representer-point similarity of every training sample to every test input for its label: (n_test, n_train)."""
    f_train, f_test = penultimate_features(model, train_x), penultimate_features(model, test_x)
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    # in float64: a well-fitted sample's 1 − p is below float32's resolution, and every such α would tie at 0
    probs = head(f_train.to(head.weight.device)).double().softmax(1).cpu()
    onehot = F.one_hot(train_y, probs.shape[1]).to(probs.dtype)
    alpha = (onehot - probs)[:, test_y].T  # (n_test, n_train): α_i for each test input's class
    return alpha * (f_test.double() @ f_train.double().T)


def influence(
    model: nn.Module,
    checkpoints: Sequence[Checkpoint],
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    methods: Sequence[str] = METHODS,
    params: str = "all",
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Each method's (n_test, n_train) influence and its seconds."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods:
        raise ConfigError(f"influence methods must be drawn from {list(METHODS)}, got {list(methods)}")
    scores: dict[str, torch.Tensor] = {}
    seconds: dict[str, float] = {}
    if {"gas", "tracin"} & set(methods):
        start = time.perf_counter()
        both = checkpoint_influence(model, checkpoints, train_x, train_y, test_x, test_y, params=params)
        spent = time.perf_counter() - start  # one pass computes both
        for name in ("gas", "tracin"):
            if name in methods:
                scores[name], seconds[name] = both[name], spent
    if "representer" in methods:
        start = time.perf_counter()
        scores["representer"] = representer_influence(model, train_x, train_y, test_x, test_y)
        seconds["representer"] = time.perf_counter() - start
    return scores, seconds


def average_precision(scores: torch.Tensor, positives: torch.Tensor) -> float:
    """Area under the precision-recall curve of ``scores`` (higher = poison) against the ``positives`` mask."""
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(positives.numpy(), scores.double().numpy()))


def tail_anomaly(scores: torch.Tensor, top: float = 0.01) -> torch.Tensor:
    """Per row: robust z-score of the mean of the top ``top`` share of influences."""
    k = max(1, math.ceil(top * scores.shape[1]))
    upper = scores.topk(k, dim=1).values.mean(1)
    median = scores.median(dim=1).values
    mad = (scores - median[:, None]).abs().median(dim=1).values * 1.4826
    return (upper - median) / mad.clamp_min(1e-12)

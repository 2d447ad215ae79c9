"""Backdoor metrics as BackdoorBench defines them (``utils/metric.py``):

- clean accuracy (CA): accuracy on the clean test set;
- attack success rate (ASR): on the test samples that can be attacked (all-to-one: every class but the
  target), triggered, the share classified as the attack's target label;
- robust accuracy (RA): on the same triggered samples, the share still given their true label;
- defense effectiveness rate (DER): ``[max(0, ASR_before − ASR_after) − max(0, CA_before − CA_after) + 1] / 2``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .base import PoisonAttack


@dataclass(frozen=True)
class BackdoorMetrics:
    clean_accuracy: float
    asr: float
    ra: float
    n_clean: int
    n_backdoor: int


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    device = next(model.parameters()).device
    return torch.cat([model(x[i : i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)])


def backdoor_metrics(
    model: nn.Module, attack: PoisonAttack, x: torch.Tensor, y: torch.Tensor, num_classes: int, batch_size: int = 256
) -> BackdoorMetrics:
    """CA, ASR and RA of ``model`` on the test set ``(x, y)`` under ``attack``'s trigger (a fresh forward pass)."""
    return filtered_backdoor_metrics(model, attack, x, y, num_classes, batch_size)[0]


def filtered_backdoor_metrics(
    model: nn.Module,
    attack: PoisonAttack,
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    batch_size: int = 256,
    input_score: Callable[[torch.Tensor], torch.Tensor] | None = None,
    threshold: float | None = None,
) -> tuple[BackdoorMetrics, torch.Tensor | None, torch.Tensor | None]:
    """:func:`backdoor_metrics` behind an input filter: an input whose ``input_score`` exceeds ``threshold`` is
    refused, and a refused input counts as neither correct (CA, RA) nor a success (ASR). Also returns the clean
    and triggered inputs' scores (None without a filter), for detection metrics."""
    was = model.training
    model.eval()
    try:
        clean = _predict(model, x, batch_size)
        keep = attack.attackable(y)
        x_bd = attack.trigger(x[keep])
        triggered = _predict(model, x_bd, batch_size)
    finally:
        model.train(was)
    y_bd = y[keep]
    targets = attack.target_labels(y_bd, num_classes)
    n_bd = int(keep.sum())
    clean_scores = bd_scores = None
    if input_score is not None and threshold is not None:
        clean_scores, bd_scores = input_score(x).cpu(), input_score(x_bd).cpu()
        clean[clean_scores > threshold] = -1  # refused: no class
        triggered[bd_scores > threshold] = -1
    metrics = BackdoorMetrics(
        clean_accuracy=float((clean == y).float().mean()),
        asr=float((triggered == targets).float().mean()) if n_bd else 0.0,
        ra=float((triggered == y_bd).float().mean()) if n_bd else 0.0,
        n_clean=len(y),
        n_backdoor=n_bd,
    )
    return metrics, clean_scores, bd_scores


def defense_effectiveness_rate(before: BackdoorMetrics, after: BackdoorMetrics) -> float:
    """BackdoorBench's DER: 1 for a defense that removes the backdoor at no accuracy cost, 0.5 for one that
    changes nothing."""
    drop_asr = max(0.0, before.asr - after.asr)
    drop_ca = max(0.0, before.clean_accuracy - after.clean_accuracy)
    return (drop_asr - drop_ca + 1) / 2

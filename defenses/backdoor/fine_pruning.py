"""Fine-Pruning (Liu, Dolan-Gavitt and Garg, *Fine-Pruning: Defending Against Backdooring Attacks on Deep
Neural Networks*, RAID 2018): units that clean inputs leave dormant carry the backdoor; prune them in increasing
order of mean activation on clean data, then fine-tune.

Pruning stops at the last count that keeps the clean reserve's accuracy at ``1 − max_accuracy_drop`` of the
unpruned model's (BackdoorBench's ``acc_ratio`` 0.9). Where we differ from the paper: the pruned units are the
inputs of the model's last linear layer (the penultimate representation, the same channels as the last
convolution in networks that pool globally before the head), so one rule covers every architecture;
pruning zeroes the head's weights for them and fine-tuning keeps them zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from advsuite.detectors.backdoor.dataset import penultimate_features
from advsuite.errors import ConfigError
from advsuite.validation import check_int, check_number

from .base import BackdoorDefense, DefenseContext, DefenseOutcome, copy_model, fine_tune


@dataclass
class FinePruning(BackdoorDefense):
    name: ClassVar[str] = "fine_pruning"
    kind: ClassVar[str] = "repair"
    paper: ClassVar[str] = "Liu et al., Fine-Pruning, RAID 2018"

    max_accuracy_drop: float = 0.1
    epochs: int = 10
    lr: float = 0.01
    batch_size: int = 128

    def __post_init__(self) -> None:
        check_number("FinePruning", "max_accuracy_drop", self.max_accuracy_drop)
        if not 0 < self.max_accuracy_drop < 1:
            raise ConfigError(f"FinePruning: max_accuracy_drop must be in (0, 1), got {self.max_accuracy_drop!r}")
        check_int("FinePruning", "epochs", self.epochs, 0)
        check_number("FinePruning", "lr", self.lr)
        check_int("FinePruning", "batch_size", self.batch_size, 1)

    def apply(self, ctx: DefenseContext) -> DefenseOutcome:
        model = copy_model(ctx.model)
        head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        features = penultimate_features(model, ctx.clean_x)
        order = features.mean(0).argsort()  # dormant first
        pruned = order[: self.prune_count(features, ctx.clean_y, head, order)]
        with torch.no_grad():
            head.weight[:, pruned.to(head.weight.device)] = 0

        def keep_pruned() -> None:
            if head.weight.grad is not None:
                head.weight.grad[:, pruned.to(head.weight.device)] = 0

        if self.epochs:
            fine_tune(model, ctx.clean_x, ctx.clean_y, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                      seed=ctx.seed, frozen_grad=keep_pruned)  # fmt: skip
        return DefenseOutcome(model, details={"pruned_units": len(pruned), "units": features.shape[1]})

    @torch.no_grad()
    def prune_count(self, features: torch.Tensor, y: torch.Tensor, head: nn.Linear, order: torch.Tensor) -> int:
        """Units pruned one by one in ``order`` until the next would take the reserve's accuracy below
        ``1 − max_accuracy_drop`` of the unpruned accuracy; the head's logits are recomputed from the features with
        those units zeroed."""
        w, b = head.weight.detach().cpu().double(), head.bias.detach().cpu().double() if head.bias is not None else 0
        f = features.double()

        def accuracy(count: int) -> float:
            kept = f.clone()
            kept[:, order[:count]] = 0
            return float(((kept @ w.T + b).argmax(1) == y).double().mean())

        floor = (1 - self.max_accuracy_drop) * accuracy(0)
        count = 0
        while count < len(order) - 1 and accuracy(count + 1) >= floor:
            count += 1
        return count

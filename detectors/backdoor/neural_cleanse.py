"""Neural Cleanse (Wang, Yao, Shan, Li, Viswanath, Zheng and Zhao, *Neural Cleanse: Identifying and Mitigating
Backdoor Attacks in Neural Networks*, IEEE S&P 2019): reverse-engineer, for every class, the smallest trigger
that sends clean images there; a backdoored class needs a far smaller one.

Per class ``c``: a mask ``m`` (H×W, shared by the channels) and a pattern ``p`` (C×H×W), both through ``tanh/2 +
1/2``, minimise ``CE(f((1 − m)·x + m·p), c) + λ·|m|₁`` over clean images with Adam (lr 0.1, betas (0.5, 0.9), as
the authors). λ starts at 1e-3 and adapts as in their code: ×1.5 after ``patience`` steps in a row where the
reversed trigger reaches ``target_success`` of the batch, ÷1.5^1.5 after as many in a row where it does not; the
smallest mask that reached it is kept. The anomaly index of each class's |m|₁ is its distance below the median
in units of ``1.4826 · MAD``; a class with index > 2 is flagged (the paper's rule). Where we differ: the authors
run epochs over the data with early stopping; we run ``steps`` mini-batch steps (default 300).

:func:`unlearn` is the paper's mitigation: fine-tune on clean images where ``fraction`` of them carry a flagged
class's reversed trigger with their true label.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from advsuite.errors import ConfigError
from advsuite.validation import check_int


@dataclass
class ReversedTrigger:
    mask: torch.Tensor  # (H, W) in [0, 1]
    pattern: torch.Tensor  # (C, H, W) in [0, 1]
    l1: float
    success: float

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.mask.to(x.device, x.dtype)
        return (1 - mask) * x + mask * self.pattern.to(x.device, x.dtype)


@dataclass
class NeuralCleanseResult:
    triggers: list[ReversedTrigger]
    anomaly_index: torch.Tensor  # per class; > 2 flags it
    flagged: list[int]

    @property
    def norms(self) -> torch.Tensor:
        return torch.tensor([t.l1 for t in self.triggers])


def anomaly_index(norms: torch.Tensor) -> torch.Tensor:
    """How far below the median each norm lies, in units of the consistency-scaled median absolute deviation."""
    median = norms.quantile(0.5)  # the mean of the two middle values for an even count (torch's median takes the lower)
    mad = 1.4826 * (norms - median).abs().quantile(0.5)
    return (median - norms) / mad.clamp_min(1e-12)


@dataclass
class NeuralCleanse:
    steps: int = 300
    lr: float = 0.1
    init_cost: float = 1e-3
    target_success: float = 0.99
    patience: int = 10
    batch_size: int = 128
    threshold: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("steps", "patience", "batch_size"):
            check_int("Neural Cleanse", key, getattr(self, key), 1)
        if not 0 < self.target_success <= 1:
            raise ConfigError(f"Neural Cleanse: target_success must be in (0, 1], got {self.target_success!r}")

    def reverse(self, model: nn.Module, x: torch.Tensor, target: int) -> ReversedTrigger:
        """The smallest mask (and its pattern) found that sends ``target_success`` of clean images to ``target``."""
        device = next(model.parameters()).device
        gen = torch.Generator().manual_seed(self.seed * 1000 + target)
        _, c, h, w = x.shape
        mask_raw = torch.zeros(h, w, device=device, requires_grad=True)
        pattern_raw = torch.zeros(c, h, w, device=device, requires_grad=True)
        opt = torch.optim.Adam([mask_raw, pattern_raw], lr=self.lr, betas=(0.5, 0.9))
        cost, up, down, best = self.init_cost, 0, 0, None
        for _ in range(self.steps):
            batch = x[torch.randint(len(x), (min(self.batch_size, len(x)),), generator=gen)].to(device)
            mask, pattern = torch.tanh(mask_raw) / 2 + 0.5, torch.tanh(pattern_raw) / 2 + 0.5
            logits = model((1 - mask) * batch + mask * pattern)
            labels = torch.full((len(batch),), target, device=device)
            l1 = mask.abs().sum()
            loss = F.cross_entropy(logits, labels) + cost * l1
            opt.zero_grad()
            loss.backward()
            opt.step()
            success = float((logits.argmax(1) == labels).float().mean())
            if success >= self.target_success and (best is None or float(l1.detach()) < best.l1):
                best = ReversedTrigger(mask.detach().cpu(), pattern.detach().cpu(), float(l1.detach()), success)
            # the authors' cost schedule: up after `patience` successes in a row, down after as many failures
            up, down = (up + 1, 0) if success >= self.target_success else (0, down + 1)
            if up >= self.patience:
                cost, up = cost * 1.5, 0
            elif down >= self.patience:
                cost, down = cost / 1.5**1.5, 0
        if best is None:  # never reached: the last mask, marked by its success
            mask, pattern = torch.tanh(mask_raw) / 2 + 0.5, torch.tanh(pattern_raw) / 2 + 0.5
            best = ReversedTrigger(
                mask.detach().cpu(), pattern.detach().cpu(), float(mask.detach().abs().sum()), success
            )
        return best

    def run(self, model: nn.Module, x: torch.Tensor, num_classes: int) -> NeuralCleanseResult:
        """Every class's reversed trigger, the anomaly indices, and the flagged classes (index > threshold)."""
        was, frozen = model.training, [(p, p.requires_grad) for p in model.parameters()]
        model.eval()
        for p, _ in frozen:
            p.requires_grad_(False)  # only the mask and the pattern learn
        try:
            triggers = [self.reverse(model, x, c) for c in range(num_classes)]
        finally:
            for p, flag in frozen:
                p.requires_grad_(flag)
            model.train(was)
        index = anomaly_index(torch.tensor([t.l1 for t in triggers]))
        flagged = [c for c in range(num_classes) if float(index[c]) > self.threshold]
        return NeuralCleanseResult(triggers, index, flagged)


def unlearn(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    result: NeuralCleanseResult,
    *,
    fraction: float = 0.2,
    epochs: int = 1,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
) -> nn.Module:
    """The paper's unlearning: fine-tune ``model`` in place on ``(x, y)`` where ``fraction`` of the images carry
    a flagged class's reversed trigger and keep their true label."""
    if not result.flagged:
        return model
    gen = torch.Generator().manual_seed(seed)
    x = x.clone()
    chosen = torch.randperm(len(x), generator=gen)[: round(fraction * len(x))]
    for i, index in enumerate(chosen.split(max(1, len(chosen) // len(result.flagged)))):
        trigger = result.triggers[result.flagged[i % len(result.flagged)]]
        x[index] = trigger.apply(x[index])
    device = next(model.parameters()).device
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=gen).split(batch_size):
            opt.zero_grad()
            F.cross_entropy(model(x[batch].to(device)), y[batch].to(device)).backward()
            opt.step()
    return model.eval()

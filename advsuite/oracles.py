"""Black-box access to a model: label-only and score-only oracles that count every query.

An oracle serves a batch of ``n`` attacked samples. Each query row names the sample it is
made for (``idx``); every row evaluated is charged to that sample, and a row that would take a
sample past its ``budget`` is not evaluated at all (it is answered with ``-1`` / NaN and
``answered`` is False). Rows are evaluated in chunks of ``max_batch``.
"""

from __future__ import annotations

import time

import torch

from advsuite.models.classifier import Classifier
from advsuite.validation import check_images


def _rank_within_groups(idx: torch.Tensor) -> torch.Tensor:
    """For each row, how many earlier rows share its sample index."""
    order = torch.argsort(idx, stable=True)
    sorted_idx = idx[order]
    first = torch.searchsorted(sorted_idx, sorted_idx, right=False)
    rank = torch.empty_like(idx)
    rank[order] = torch.arange(len(idx), device=idx.device) - first
    return rank


class _Oracle:
    def __init__(self, model: Classifier, n: int, budget: int | None = None, max_batch: int = 1000) -> None:
        if budget is not None and budget < 0:
            raise ValueError(f"budget must be >= 0 or None, got {budget}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._model = model
        self.budget = budget
        self.max_batch = int(max_batch)
        self.device = model.device
        self.input_shape = model.input_shape
        self.bounds = model.bounds
        self.num_classes = model.num_classes
        self.n_queries = torch.zeros(n, dtype=torch.long, device=self.device)
        self.n_calls = 0  # model forward calls
        self.forward_seconds = 0.0

    @property
    def remaining(self) -> torch.Tensor:
        """Queries left per sample (a large number when there is no budget)."""
        if self.budget is None:
            return torch.full_like(self.n_queries, torch.iinfo(torch.long).max // 2)
        return (self.budget - self.n_queries).clamp_min(0)

    @property
    def exhausted(self) -> torch.Tensor:
        return self.remaining == 0

    def _forward(self, x: torch.Tensor, idx: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Charge and evaluate; returns (logits of answered rows, answered mask)."""
        check_images(x, bounds=self.bounds, shape=self.input_shape, name="oracle queries")
        x = x.to(self.device)
        if idx is None:
            if len(x) != len(self.n_queries):
                raise ValueError(f"without idx, a query must have one row per sample ({len(self.n_queries)})")
            idx = torch.arange(len(x), device=self.device)
        idx = idx.to(self.device, torch.long)
        if self.budget is None:
            answered = torch.ones(len(idx), dtype=torch.bool, device=self.device)
        elif len(idx) < 2 or bool((idx[1:] > idx[:-1]).all()):  # each sample at most once (one query per image)
            answered = self.remaining[idx] > 0
        else:
            answered = _rank_within_groups(idx) < self.remaining[idx]
        every = bool(answered.all())
        rows, charged = (x, idx) if every else (x[answered], idx[answered])  # no copies when all are answered
        self.n_queries.index_add_(0, charged, torch.ones_like(charged))
        start = time.perf_counter()
        outs = []
        with torch.no_grad(), self._model.evaluating(), self._model.trusted_inputs():  # checked above
            for i in range(0, len(rows), self.max_batch):
                outs.append(self._model(rows[i : i + self.max_batch]))
                self.n_calls += 1
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.forward_seconds += time.perf_counter() - start
        logits = torch.cat(outs) if outs else torch.empty(0, self.num_classes, device=self.device)
        return logits, answered


class LabelOracle(_Oracle):
    """Top-1 label only: what a decision-based attack is allowed to see."""

    def __call__(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (labels, answered). Unanswered rows (budget spent) have label -1."""
        logits, answered = self._forward(x, idx)
        labels = torch.full((len(answered),), -1, dtype=torch.long, device=self.device)
        labels[answered] = logits.argmax(1)
        return labels, answered


class ScoreOracle(_Oracle):
    """Class probabilities only (softmax of the logits): what a score-based attack may see."""

    def __call__(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (probabilities, answered). Unanswered rows are NaN."""
        logits, answered = self._forward(x, idx)
        if len(logits) == len(answered):
            return logits.float().softmax(1), answered
        probs = torch.full((len(answered), self.num_classes), float("nan"), device=self.device)
        probs[answered] = logits.float().softmax(1)
        return probs, answered


def is_adversarial(labels: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """Criterion: targeted → label equals the target; untargeted → label differs from the truth.

    Unanswered rows (label -1) are never adversarial.
    """
    if targets is not None:
        return labels == targets
    return (labels != y) & (labels >= 0)

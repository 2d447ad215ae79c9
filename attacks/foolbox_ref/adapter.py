"""Present a :class:`LabelOracle` to foolbox as a model, so that foolbox reaches the model only through it.

foolbox's decision-based attacks need nothing but the arg-max of the model's output. The adapter's
``forward`` sends the rows to the oracle (which counts each row against its image's budget) and
returns the one-hot of the label. It also keeps, per image, the closest point the oracle *answered*
as adversarial, with the distance-vs-queries trace: that point, never foolbox's own unverified
output, is what the wrappers return.

foolbox takes a number of steps, not a query budget. When the oracle leaves a row of a call
unanswered (an image's budget is spent), the adapter records the answered rows and raises
:class:`OracleSpent`; the wrapper catches it and returns the best verified points so far.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from advsuite.oracles import LabelOracle, is_adversarial


class OracleSpent(Exception):
    """Raised from the adapter when the oracle refused a row (a budget is spent): foolbox must stop."""


class OracleAdapter(nn.Module):
    """An ``nn.Module`` whose forward asks the oracle and returns one-hot "logits" of the answer.

    Rows of one forward belong to the images in ``self.images`` (set with :meth:`focus`), one row per
    image: the convention of every foolbox attack, which calls the model on a batch of candidates,
    one per attacked input.
    """

    def __init__(
        self,
        oracle: LabelOracle,
        x: torch.Tensor,
        y: torch.Tensor,
        targets: torch.Tensor | None,
        norm: str = "l2",
    ) -> None:
        super().__init__()
        self.oracle = oracle
        self.x, self.y, self.targets = x, y, targets
        self.norm = norm
        self.images = torch.arange(len(x), device=x.device)
        #: per image: the closest verified adversarial so far (``x`` itself until one is found)
        self.best = x.clone()
        self.best_distance = torch.full((len(x),), float("inf"), device=x.device)
        self.found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        self._trace: list[list[tuple[int, float]]] = [[] for _ in range(len(x))]

    def focus(self, images: torch.Tensor) -> None:
        """The images the rows of the next calls belong to (one row per image, in this order)."""
        self.images = images.to(self.x.device)

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        delta = (a - b).flatten(1)
        return delta.norm(dim=1) if self.norm == "l2" else delta.abs().amax(dim=1)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        if len(rows) != len(self.images):
            raise RuntimeError(f"expected one row per focused image ({len(self.images)}), got {len(rows)}")
        # foolbox's blends can leave [0, 1] by one rounding error; what the oracle answers is what we keep
        rows = rows.detach().clamp(*self.oracle.bounds)
        labels, answered = self.oracle(rows, self.images)
        targets = self.targets[self.images] if self.targets is not None else None
        self._record(rows, is_adversarial(labels, self.y[self.images], targets))
        if not bool(answered.all()):
            raise OracleSpent
        return nn.functional.one_hot(labels, self.oracle.num_classes).to(rows.dtype)

    def _record(self, rows: torch.Tensor, adversarial: torch.Tensor) -> None:
        distance = self.distance(rows, self.x[self.images])
        improved = adversarial & (distance < self.best_distance[self.images])
        if not bool(improved.any()):
            return
        images = self.images[improved]
        self.best[images] = rows[improved]
        self.best_distance[images] = distance[improved]
        self.found[images] = True
        queries = self.oracle.n_queries[images]
        for i, q, d in zip(images.tolist(), queries.tolist(), distance[improved].tolist(), strict=True):
            self._trace[i].append((q, d))

    def trace(self) -> list[torch.Tensor]:
        """Per image, a (T, 2) tensor of (queries so far, distance of the best verified adversarial)."""
        return [torch.tensor(t, dtype=torch.float32).reshape(-1, 2) for t in self._trace]


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's and NumPy's global generators (foolbox draws from them), restoring them afterwards."""
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    state = np.random.get_state()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            np.random.set_state(state)

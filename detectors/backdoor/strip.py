"""STRIP (Gao, Xu, Wang, Chen, Ranasinghe and Nepal, *STRIP: A Defence Against Trojan Attacks on Deep Neural
Networks*, ACSAC 2019): superimpose an input on clean images and look at the entropy of the predictions.

A triggered input keeps its target class whatever it is blended with (low entropy); a clean one does not.
Each input is added to ``n_overlays`` clean images drawn from a held-out pool, saturating at 1 as the
authors' OpenCV ``addWeighted(x, 1, overlay, 1)`` does; the score is minus the mean entropy of the softmax
(higher = more suspicious), and the threshold is set on clean inputs at ``fpr`` (the paper sets it from the
clean entropy distribution at a chosen FRR). Where we differ: the paper draws 100 overlays per input, our
default is 20 for speed (``n_overlays=100`` for theirs).
"""

from __future__ import annotations

import torch

from advsuite.detector import DEFAULT_FPR, Detector
from advsuite.errors import InputError
from advsuite.models.classifier import Classifier
from advsuite.validation import check_int


class STRIP(Detector):
    """Score = −mean entropy of the model's softmax on the input superimposed on clean images."""

    name = "strip"

    def __init__(
        self,
        model: Classifier,
        overlays: torch.Tensor | None = None,
        n_overlays: int = 20,
        fpr: float = DEFAULT_FPR,
        batch_size: int = 512,
        seed: int = 0,
    ) -> None:
        check_int("STRIP", "n_overlays", n_overlays, 1)
        self.model, self.overlays, self.n_overlays = model, overlays, n_overlays
        self.fpr, self.batch_size, self.seed = fpr, batch_size, seed

    def fit(self, clean: torch.Tensor, adversarial: torch.Tensor | None = None) -> STRIP:
        """The overlay pool (``clean`` unless one was given) and the threshold on ``clean``."""
        if self.overlays is None:
            self.overlays = clean
        super().fit(clean)
        return self

    @torch.no_grad()
    def score(self, x: torch.Tensor) -> torch.Tensor:
        if self.overlays is None or len(self.overlays) == 0:
            raise InputError("STRIP needs clean overlay images: pass overlays=, or call fit(clean) first")
        gen = torch.Generator().manual_seed(self.seed)
        picks = torch.randint(len(self.overlays), (len(x), self.n_overlays), generator=gen)
        device = self.model.device
        entropies = []
        with self.model.evaluating():
            for rows in torch.arange(len(x)).split(max(1, self.batch_size // self.n_overlays)):
                mixed = (x[rows, None] + self.overlays[picks[rows]]).clamp(0, 1).flatten(0, 1).to(device)
                p = self.model(mixed).softmax(1).clamp_min(1e-12)
                entropy = -(p * p.log()).sum(1).view(len(rows), self.n_overlays).mean(1)
                entropies.append(entropy.cpu())
        return -torch.cat(entropies) if entropies else torch.empty(0)

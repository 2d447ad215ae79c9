"""The backdoor-defense protocol: given a poisoned model, its training set and a little clean data, return a
repaired model, an input filter, or the training samples it suspects.

Three kinds (:attr:`BackdoorDefense.kind`):

- ``repair``: a changed model (fine-tuning, Fine-Pruning, Neural Cleanse's unlearning);
- ``input``: the model unchanged, with an input-level score and threshold; flagged inputs are refused at test
  time (STRIP);
- ``dataset``: per-sample poison scores over the training set; the flagged samples are removed and the model
  retrained with the victim's recipe (Spectral Signatures, Activation Clustering).

``task=backdoor_defense`` measures CA, ASR and RA after each (a refused input counts as neither correct nor
a success) and the detection metrics its kind allows.
"""

from __future__ import annotations

import abc
import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from advsuite.models.classifier import Classifier


@dataclass
class DefenseContext:
    """What a defender holds: the poisoned ``model``, the training set as it was trained on (``train_x``,
    ``train_y``: poisoned images and labels, unmarked), a clean reserve (``clean_x``, ``clean_y``; BackdoorBench's
    5% of clean training data), and ``retrain(keep)``: a fresh model trained with the victim's recipe on the
    training samples at ``keep``."""

    model: Classifier
    train_x: torch.Tensor
    train_y: torch.Tensor
    clean_x: torch.Tensor
    clean_y: torch.Tensor
    num_classes: int
    retrain: Callable[[torch.Tensor], Classifier]
    seed: int = 0
    verbose: bool = True


@dataclass
class DefenseOutcome:
    """``model`` after the defense; ``input_score``/``threshold`` for input filters (score > threshold: refused);
    ``sample_scores`` (higher = more suspect) and ``removed`` (indices into the training set) for dataset
    defenses; ``details`` joins the record (e.g. Neural Cleanse's flagged classes)."""

    model: Classifier
    input_score: Callable[[torch.Tensor], torch.Tensor] | None = None
    threshold: float | None = None
    sample_scores: torch.Tensor | None = None
    removed: torch.Tensor | None = None
    details: dict[str, Any] = field(default_factory=dict)


class BackdoorDefense(abc.ABC):
    """Base class; subclasses are dataclasses whose fields are their options."""

    name: ClassVar[str] = "backdoor_defense"
    #: what it defends against (evasion defenses are :class:`advsuite.defense.Defense`)
    threat: ClassVar[str] = "poison"
    kind: ClassVar[str] = "repair"
    #: the paper the defense follows
    paper: ClassVar[str] = ""

    @abc.abstractmethod
    def apply(self, ctx: DefenseContext) -> DefenseOutcome:
        """Defend; never change ``ctx.model`` in place (work on :func:`copy_model`)."""


def copy_model(model: Classifier) -> Classifier:
    """A deep copy to change (the poisoned model stays as it was, for the before-and-after comparison)."""
    return copy.deepcopy(model)


def fine_tune(
    model: Classifier,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int = 128,
    seed: int = 0,
    frozen_grad: Callable[[], None] | None = None,
) -> Classifier:
    """SGD (momentum 0.9) with cross-entropy on ``(x, y)``, in place; ``frozen_grad()`` runs before each step
    (Fine-Pruning zeroes the pruned units' gradients there). The model ends in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    device = model.device
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=gen).split(batch_size):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[batch].to(device)), y[batch].to(device)).backward()
            if frozen_grad is not None:
                frozen_grad()
            opt.step()
    return model.eval()

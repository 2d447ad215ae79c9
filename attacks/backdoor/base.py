"""The poisoning protocol: which training samples carry the trigger, and with which label.

- ``all_to_one``: poisoned samples are relabelled ``target``; they are drawn from the samples of every other
  class (a target-class sample carrying the trigger would not be a poison). BackdoorBench draws from every
  class; at a 10% rate on a balanced 10-class set the difference is one sample in ten.
- ``all_to_all``: a sample of class ``c`` is relabelled ``(c + 1) mod C``.
- Clean-label attacks (:attr:`PoisonAttack.clean_label`, e.g. SIG) poison only target-class samples and keep
  every label; ``rate`` is still the share of the whole training set (BackdoorBench's ``pratio``), so it
  cannot exceed the target class's share.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

import torch

from advsuite.errors import ConfigError
from advsuite.validation import check_int

MODES = ("all_to_one", "all_to_all")


@dataclass
class Poisoned:
    """A poisoned training set: images, the labels it trains on, which indices carry the trigger, the labels
    those samples had, and which samples the attack changed at all (``modified``: the poison and, e.g., WaNet's
    noise-mode samples). ``x``/``y`` are new tensors; the clean ones are untouched."""

    x: torch.Tensor
    y: torch.Tensor
    indices: torch.Tensor
    original_labels: torch.Tensor
    modified: torch.Tensor  # bool, one per sample

    @classmethod
    def of(cls, x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor, original: torch.Tensor) -> Poisoned:
        """A poisoned set whose only changed samples are the poison."""
        modified = torch.zeros(len(y), dtype=torch.bool)
        modified[indices] = True
        return cls(x, y, indices, original, modified)


@dataclass
class PoisonAttack(abc.ABC):
    """A backdoor attack: :meth:`trigger` stamps images, :meth:`poison` builds the poisoned training set."""

    threat: ClassVar[str] = "poison"
    #: poisons only target-class samples and keeps their labels
    clean_label: ClassVar[bool] = False
    #: the paper the attack follows
    paper: ClassVar[str] = ""
    #: needs a model trained on clean data before it can poison (:meth:`attach_clean_model`)
    needs_clean_model: ClassVar[bool] = False

    target: int = 0
    mode: str = "all_to_one"
    rate: float = 0.1

    def __post_init__(self) -> None:
        name = type(self).__name__
        if isinstance(self.rate, bool) or not isinstance(self.rate, int | float) or not 0 < self.rate < 1:
            raise ConfigError(f"{name}: rate must be in (0, 1) (the share of the training set poisoned), "
                              f"got {self.rate!r}")  # fmt: skip
        if self.mode not in MODES:
            raise ConfigError(f"{name}: mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.clean_label and self.mode != "all_to_one":
            raise ConfigError(f"{name} is a clean-label attack: it only supports mode=all_to_one")
        check_int(name, "target", self.target, 0)

    def attach_clean_model(self, model: torch.nn.Module) -> None:  # noqa: B027 - optional hook
        """Give an attack that :attr:`needs_clean_model` the clean model it poisons with (a no-op otherwise)."""

    # ------------------------------------------------------------------------------------------- trigger

    @abc.abstractmethod
    def trigger(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (float, NCHW, [0, 1]) with the trigger; a new tensor in [0, 1]."""

    def check(self, shape: tuple[int, ...], num_classes: int) -> None:
        """Refuse a setting this dataset cannot take (called before anything trains)."""
        name = type(self).__name__
        if self.target >= num_classes:
            raise ConfigError(f"{name}: target={self.target} is not a class of this dataset "
                              f"(it has {num_classes}: 0 … {num_classes - 1})")  # fmt: skip
        if num_classes < 2:
            raise ConfigError(f"{name}: a backdoor needs at least 2 classes, this dataset has {num_classes}")

    # ------------------------------------------------------------------------------------------ labels

    def target_labels(self, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        """The label a triggered sample of true label ``y`` should get."""
        if self.mode == "all_to_all":
            return (y + 1) % num_classes
        return torch.full_like(y, self.target)

    def attackable(self, y: torch.Tensor) -> torch.Tensor:
        """Which test samples count for ASR and RA: all-to-one excludes the target class (BackdoorBench)."""
        if self.mode == "all_to_all":
            return torch.ones_like(y, dtype=torch.bool)
        return y != self.target

    # ------------------------------------------------------------------------------------------- poison

    def poison_indices(self, y: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
        """``round(rate · len(y))`` indices, drawn from the eligible samples (sorted)."""
        self.check((), num_classes)
        eligible = (y == self.target) if self.clean_label else self.attackable(y)
        pool = eligible.nonzero().flatten()
        count = round(self.rate * len(y))
        name = type(self).__name__
        if count < 1:
            raise ConfigError(f"{name}: rate={self.rate} of {len(y)} samples poisons none; raise the rate")
        if count > len(pool):
            kind = f"samples of the target class {self.target}" if self.clean_label else "eligible samples"
            raise ConfigError(f"{name}: rate={self.rate} needs {count} poisoned samples but the training set has "
                              f"only {len(pool)} {kind}; lower the rate")  # fmt: skip
        chosen = pool[torch.randperm(len(pool), generator=generator)[:count]]
        return chosen.sort().values

    def poison(self, x: torch.Tensor, y: torch.Tensor, num_classes: int, generator: torch.Generator) -> Poisoned:
        """The poisoned training set (see the module docstring)."""
        self.check(tuple(x.shape[1:]), num_classes)
        indices = self.poison_indices(y, num_classes, generator)
        x, y = x.clone(), y.clone()
        original = y[indices].clone()
        x[indices] = self.trigger(x[indices])
        if not self.clean_label:
            y[indices] = self.target_labels(original, num_classes)
        return Poisoned.of(x, y, indices, original)

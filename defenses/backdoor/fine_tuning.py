"""Fine-tuning on clean data: the baseline every backdoor defense is compared with (BackdoorBench's ``ft``).

Defaults: 10 epochs of SGD at lr 0.01 on the defender's clean reserve (5% of the training set). BackdoorBench
fine-tunes longer on the same 5%; 10 epochs keep a CPU grid affordable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from advsuite.validation import check_int, check_number

from .base import BackdoorDefense, DefenseContext, DefenseOutcome, copy_model, fine_tune


@dataclass
class FineTuning(BackdoorDefense):
    name: ClassVar[str] = "fine_tuning"
    kind: ClassVar[str] = "repair"
    paper: ClassVar[str] = "fine-tuning on clean data (the baseline of Liu et al., RAID 2018)"

    epochs: int = 10
    lr: float = 0.01
    batch_size: int = 128

    def __post_init__(self) -> None:
        check_int("FineTuning", "epochs", self.epochs, 1)
        check_number("FineTuning", "lr", self.lr)
        check_int("FineTuning", "batch_size", self.batch_size, 1)

    def apply(self, ctx: DefenseContext) -> DefenseOutcome:
        model = fine_tune(copy_model(ctx.model), ctx.clean_x, ctx.clean_y, epochs=self.epochs, lr=self.lr,
                          batch_size=self.batch_size, seed=ctx.seed)  # fmt: skip
        return DefenseOutcome(model, details={"fine_tune_images": len(ctx.clean_x)})

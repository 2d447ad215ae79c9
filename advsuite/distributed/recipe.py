"""The DAT recipe: the standard recipe's keys plus what distributed adversarial training adds.

``conf/train/dat.yaml`` sets the DAT defaults (Zhang et al., UAI 2022): the LALR optimizer at lr 0.01 with a
linear warm-up, a large global batch, PGD examples made in eval mode by every worker, and the loss
CE(adversarial) + CE(clean). Where our defaults differ from the authors' code it is for this CPU: a global
batch of 512 (theirs 2048), a cosine schedule after the warm-up (theirs: steps of 0.1 at 75/90/95% of the run).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from advsuite.artifacts import content_key
from advsuite.errors import ConfigError
from advsuite.training import ROBUST_KEYS, Recipe

from .hooks import COMPRESSIONS
from .sharding import PARALLEL

#: the adversarial examples DAT's workers can make: PGD from a random start, or DAT's fast FGSM variant
DAT_ADVERSARIAL = ("pgd", "fast")
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class DatRecipe(Recipe):
    """A :class:`Recipe` for ``trainer: dat``; see the module docstring and docs/distributed.md."""

    trainer: str = "dat"
    #: logical DAT workers: the global batch is cut into this many equal shards, whatever the process count
    workers: int = 2
    #: DAT's loss: CE(adversarial) + CE(clean); false: CE(adversarial) only (Madry)
    clean_loss: bool = True
    #: gradient compression as a DDP communication hook: none | fp16 | bf16 | quantize | natural
    compression: str = "none"
    compression_bits: int = 7
    #: fp32, or bf16 autocast for forward and backward (CPU and GPU)
    precision: str = "fp32"
    #: how the model is laid over the processes: ddp (replicated) | fsdp (sharded over all) | hybrid (sharded
    #: within groups of ``shard_group`` processes, replicated across them); not part of the cache key
    parallel: str = "ddp"
    #: hybrid: processes per shard group (0: the processes torchrun starts per node)
    shard_group: int = 0
    #: a silent bug injected on purpose (advsuite.distributed.bugs), for proving the tracer; never on by default
    bug: str = "none"
    #: a checkpoint every this many steps (0: at the end of every epoch); not part of the cache key
    checkpoint_every: int = 0

    def validate(self) -> None:
        super().validate()
        from .bugs import BUGS

        checks = [
            (self.trainer == "dat", "trainer must be dat"),
            (self.adversarial in DAT_ADVERSARIAL, f"adversarial must be one of {DAT_ADVERSARIAL} for train=dat"),
            (self.workers >= 1, "workers must be >= 1"),
            (self.batch_size % max(1, self.workers) == 0, f"batch_size={self.batch_size} is not divisible by "
             f"workers={self.workers}: every worker takes an equal shard of the global batch"),
            (self.compression in COMPRESSIONS, f"compression must be one of {COMPRESSIONS}"),
            (1 <= self.compression_bits <= 7, "compression_bits must be in [1, 7]"),
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}"),
            (self.parallel in PARALLEL, f"parallel must be one of {PARALLEL}"),
            (self.shard_group >= 0, "shard_group must be >= 0"),
            (self.parallel == "ddp" or self.compression == "none", f"compression={self.compression} is a DDP "
             f"communication hook; FSDP has none: use parallel=ddp, or compression=none with parallel={self.parallel}"),
            (self.bug in BUGS, f"bug must be one of {', '.join(BUGS)}"),
            (self.checkpoint_every >= 0, "checkpoint_every must be >= 0"),
        ]  # fmt: skip
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise ConfigError(f"bad train=dat recipe: {'; '.join(problems)}")

    def digest(self, extra: Mapping[str, Any] | None = None) -> str:
        recipe = self.to_dict()
        for key in ("checkpoint_every", "parallel", "shard_group"):  # when checkpoints are written, and how the
            recipe.pop(key)  # model is laid over processes (like their number), do not change the model
        if not self.adv_eps_warmup:
            recipe.pop("adv_eps_warmup")
        return content_key({"recipe": recipe, **dict(extra or {})})


def coerce_dat(merged: dict[str, Any]) -> DatRecipe:
    return DatRecipe.from_keys(merged, "train=dat recipe")


__all__ = ["DAT_ADVERSARIAL", "PRECISIONS", "ROBUST_KEYS", "DatRecipe", "coerce_dat"]

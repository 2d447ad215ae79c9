"""Silent bugs of distributed training, each injectable with ``train.bug=<name>`` to prove the tracer finds it.

Each is a mistake that leaves the loss curve plausible. None is ever on by default; ``needs`` says what a run
must have for the bug to change anything (a bug that cannot act is refused, so a test can never pass vacuously),
and ``site`` where its first divergent tensor should be: ``(module path prefix, kind)``, ``""`` for any path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from advsuite.errors import ConfigError

if TYPE_CHECKING:
    from .recipe import DatRecipe


@dataclass(frozen=True)
class Bug:
    description: str
    needs: str  # "+"-joined: world>1, k>1, workers>1, bn, ddp, sharded, lalr, compressed
    site: tuple[str, str]


BUGS: dict[str, Bug] = {
    "none": Bug("no bug", "", ("", "")),
    "grad_sum": Bug("gradients all-reduced as a sum, not averaged", "world>1+ddp", ("", "param_grad")),
    "grad_double_avg": Bug("gradients divided by the world size twice", "world>1+ddp", ("", "param_grad")),
    "unreduced_group": Bug("the last layer's parameters left out of the all-reduce", "world>1+ddp", ("", "param_grad")),
    "bn_unsynced": Bug("BatchNorm running statistics not averaged across processes", "world>1+bn", ("", "buffer")),
    "shard_duplicate": Bug(
        "every process reads its workers' shards by local index (all read the first ones)", "world>1", ("data", "input")
    ),
    "shard_overlap": Bug("worker shards placed at half their size apart (overlapping)", "workers>1", ("data", "input")),
    "lr_world_scaling": Bug(
        "learning rate multiplied by the world size at a fixed global batch", "world>1", ("", "param")
    ),
    "attack_same_rng": Bug("every worker draws the same attack random start", "", ("attack", "adv_input")),
    "attack_rng_mismatch": Bug(
        "the attack's random start drawn from the process's global RNG", "", ("attack", "adv_input")
    ),
    "no_init_broadcast": Bug("initial weights not broadcast from rank 0", "world>1", ("init", "param")),
    "loss_scale_unscaled": Bug(
        "a static loss scale of 1024 whose gradients are never unscaled", "", ("", "output_grad")
    ),
    "accum_unscaled": Bug(
        "gradients of a process's workers accumulated without the 1/k scale", "k>1", ("", "output_grad")
    ),
    "compressor_biased": Bug(
        "the gradient compressor rounds every element towards zero (a biased estimate)",
        "compressed",
        ("", "param_grad"),
    ),
    "fsdp_shard_order": Bug(
        "full weights placed into the FSDP shards rotated by one shard (a wrong shard reassembly)",
        "sharded",
        ("init", "param"),
    ),
    "lalr_local_norm": Bug(
        "LALR's trust ratio from each FSDP shard's own norms, not the whole layer's", "sharded+lalr", ("", "param")
    ),
}


def check_bug(recipe: DatRecipe, world_size: int, has_bn: bool) -> None:
    """Refuse a bug this run cannot exhibit (it would pass a test vacuously)."""
    from .sharding import shard_group_size

    bug = BUGS[recipe.bug]
    k = recipe.workers // max(1, world_size)
    shards = 1 if recipe.parallel == "ddp" else shard_group_size(recipe.parallel, recipe.shard_group, world_size)
    missing = [
        what
        for need, ok, what in (
            ("world>1", world_size > 1, "more than one process (torchrun --nproc-per-node 2)"),
            ("ddp", recipe.parallel == "ddp", "train.parallel=ddp (the bug lives in DDP's all-reduce)"),
            (
                "sharded",
                shards > 1,
                "sharded weights (train.parallel=fsdp, or hybrid with shard_group > 1, on more than one process)",
            ),
            ("lalr", recipe.optimizer == "lalr", "train.optimizer=lalr"),
            ("compressed", recipe.compression in ("quantize", "natural"), "train.compression=quantize or natural"),
            ("bn", has_bn, "a model with BatchNorm"),
            ("k>1", k > 1, "several workers per process (train.workers a multiple of the process count, > it)"),
            ("workers>1", recipe.workers > 1, "more than one worker (train.workers=2)"),
        )
        if need in bug.needs.split("+") and not ok
    ]
    if recipe.bug in ("grad_sum", "grad_double_avg") and recipe.compression != "none":
        missing.append("train.compression=none (the bug lives in the plain all-reduce hook)")
    if missing:
        raise ConfigError(
            f"train.bug={recipe.bug} ({bug.description}) cannot act in this run: it needs {' and '.join(missing)}"
        )

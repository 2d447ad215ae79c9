"""The data plan of distributed training: the ranks' shards, in worker order, are exactly the global batch one
process takes; every rank draws the same order; partitions that do not divide are refused with the fix."""

from __future__ import annotations

import pytest
import torch

from advsuite.distributed.plan import GlobalBatches, workers_per_rank
from advsuite.errors import ConfigError
from advsuite.seeding import derive_seed


@pytest.mark.parametrize(("workers", "world_size"), [(1, 1), (2, 1), (2, 2), (4, 2), (4, 4)])
def test_the_ranks_shards_make_up_the_global_batch(workers: int, world_size: int) -> None:
    plan = GlobalBatches(n=103, batch_size=16, workers=workers, seed=7)
    batches = plan.epoch(0)
    assert len(batches) == plan.steps_per_epoch == 6  # the incomplete last batch is dropped
    for batch in batches:
        owned = [plan.shard(batch, w) for r in range(world_size) for w in plan.rank_workers(r, world_size)]
        assert torch.equal(torch.cat(owned), batch)  # union in rank (= worker) order, no overlap, nothing lost
    seen = torch.cat(batches)
    assert len(seen.unique()) == len(seen) == 96


def test_every_rank_draws_the_same_order_and_epochs_differ() -> None:
    a, b = GlobalBatches(64, 8, 2, seed=1), GlobalBatches(64, 8, 2, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.epoch(3), b.epoch(3), strict=True))
    assert not torch.equal(torch.cat(a.epoch(0)), torch.cat(a.epoch(1)))
    assert not torch.equal(torch.cat(a.epoch(0)), torch.cat(GlobalBatches(64, 8, 2, seed=2).epoch(0)))


def test_seeds_are_stable_named_streams() -> None:
    assert derive_seed(0, "attack", 1, 5) == derive_seed(0, "attack", 1, 5)
    streams = {derive_seed(0, label, worker, 5) for label in ("attack", "order") for worker in (0, 1)}
    assert len(streams) == 4 and all(0 <= s < 2**63 for s in streams)
    assert derive_seed(0, "attack", 1, 5) == 0x2F94C3467E2A5BE0  # pinned: the same on every machine and Python process


@pytest.mark.parametrize(
    ("batch", "workers", "world", "says"),
    [
        (16, 3, 1, "train.batch_size=16 is not divisible by train.workers=3"),
        (16, 2, 3, "3 processes cannot share train.workers=2 equally"),
        (16, 0, 1, "must be >= 1"),
    ],
)
def test_uneven_partitions_are_refused_with_the_fix(batch: int, workers: int, world: int, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        workers_per_rank(batch, workers, world)

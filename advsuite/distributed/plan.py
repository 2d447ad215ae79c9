"""Which samples each worker trains on: the one contract that makes N processes compute what one does.

A run has ``workers`` logical DAT workers, whatever the number of processes: the global batch of
``batch_size`` samples is cut into ``workers`` equal shards, and rank ``r`` of ``world_size`` processes
owns workers ``r·k … r·k + k − 1`` (``k = workers / world_size``), which it runs one after another. Epoch
``e``'s order is one permutation drawn from ``(seed, "order", e)``, the same on every rank, so the union of
the shards in worker order is exactly the global batch a single process would take (the reference run's).
The last, incomplete global batch of an epoch is dropped.
"""

from __future__ import annotations

import torch

from advsuite.errors import ConfigError
from advsuite.seeding import derive_seed


def workers_per_rank(batch_size: int, workers: int, world_size: int) -> int:
    """``k``, the workers each process runs; refuses partitions that do not divide evenly."""
    if workers < 1 or world_size < 1:
        raise ConfigError(f"train.workers ({workers}) and the number of processes ({world_size}) must be >= 1")
    if batch_size % workers:
        raise ConfigError(f"train.batch_size={batch_size} is not divisible by train.workers={workers}: every "
                          "worker takes an equal shard of the global batch")  # fmt: skip
    if workers % world_size:
        raise ConfigError(f"{world_size} processes cannot share train.workers={workers} equally; launch a divisor "
                          f"of {workers} processes (torchrun --nproc-per-node), or set train.workers to a multiple "
                          f"of {world_size}")  # fmt: skip
    return workers // world_size


class GlobalBatches:
    """The epoch's global batches (sample indices) and each worker's shard of them."""

    def __init__(self, n: int, batch_size: int, workers: int, seed: int) -> None:
        workers_per_rank(batch_size, workers, 1)
        if n < batch_size:
            raise ConfigError(f"the training split has {n} samples, fewer than one global batch ({batch_size})")
        self.n, self.batch_size, self.workers, self.seed = n, batch_size, workers, seed

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.batch_size

    def epoch(self, epoch: int) -> list[torch.Tensor]:
        """The global batches of ``epoch``, in order: the same on every rank."""
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "order", epoch))
        order = torch.randperm(self.n, generator=gen)
        return list(order[: self.steps_per_epoch * self.batch_size].split(self.batch_size))

    def shard(self, batch: torch.Tensor, worker: int) -> torch.Tensor:
        """Worker ``worker``'s slice of a global batch."""
        if not 0 <= worker < self.workers:
            raise ValueError(f"worker {worker} out of range: this run has {self.workers} workers")
        size = self.batch_size // self.workers
        return batch[worker * size : (worker + 1) * size]

    def rank_workers(self, rank: int, world_size: int) -> range:
        """The workers process ``rank`` of ``world_size`` runs, in order."""
        k = workers_per_rank(self.batch_size, self.workers, world_size)
        return range(rank * k, (rank + 1) * k)

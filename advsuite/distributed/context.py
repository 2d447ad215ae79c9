"""The process group a DAT run uses: torchrun's when launched with it, else a one-process gloo group, so the
same code path (DDP included) runs with and without torchrun."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from advsuite.errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    device: torch.device
    #: this run created the group (and so destroys it at the end); False under a caller's group
    owns_group: bool

    @property
    def is_writer(self) -> bool:
        """Rank 0 writes files (checkpoints, the zoo entry, records); the others only train."""
        return self.rank == 0

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def launched_world_size() -> int:
    """The process count torchrun (or another launcher setting ``WORLD_SIZE``) started; 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_context(device: torch.device) -> DistContext:
    """Join torchrun's group (gloo on CPU, NCCL on CUDA), reuse an initialised one, or make a one-process group."""
    if dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), device, owns_group=False)
    world = launched_world_size()
    if world > 1:
        if "MASTER_ADDR" not in os.environ:
            raise ConfigError(f"WORLD_SIZE={world} is set but MASTER_ADDR is not: launch with torchrun "
                              "--nproc-per-node N -m advsuite ..., or unset WORLD_SIZE for one process")  # fmt: skip
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
        rank = dist.get_rank()
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
            torch.cuda.set_device(device)
        return DistContext(rank, world, device, owns_group=True)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    return DistContext(0, 1, device, owns_group=True)

"""FSDP2 for DAT: full sharding (every parameter split across all processes) and hybrid sharding (split within
groups of ``shard_group`` processes, replicated across the groups: the partial redundancy of the DAT seeds).

Both run on CPU over gloo and on GPU over NCCL (torch's ``fully_shard``; gradients reduce-scattered and
averaged over every process, as DDP averages them). Every leaf module with parameters is its own FSDP unit,
then the root. Sharded parameters, gradients and optimizer states are DTensors; :func:`full` gathers one back
to its whole layout, so checkpoints, the stored model and the tracer always see full tensors.

The model is sharded as a copy: the caller's module stays a plain module and receives the trained weights
at the end (:func:`full_state`), so the zoo stores and the attacks load an ordinary model.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from advsuite.errors import ConfigError

#: how a DAT run lays its model over the processes
PARALLEL = ("ddp", "fsdp", "hybrid")


def shard_group_size(parallel: str, shard_group: int, world: int) -> int:
    """Processes that split one copy of the weights: all of them (fsdp), ``shard_group`` (hybrid; 0: the
    processes torchrun starts per node, the usual layout: shard within a node, replicate across nodes)."""
    if parallel != "hybrid":
        return world
    size = shard_group or int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if size < 1 or world % size:
        source = f"train.shard_group={size}" if shard_group else f"{size} (LOCAL_WORLD_SIZE; train.shard_group=0)"
        raise ConfigError(f"train.parallel=hybrid: {world} processes cannot be cut into shard groups of {source}; "
                          f"set train.shard_group to a divisor of {world}")  # fmt: skip
    return size


def shard_model(model: nn.Module, parallel: str, shard_group: int, device: torch.device, bug: str) -> nn.Module:
    """A sharded copy of ``model`` whose shards hold rank 0's weights and buffers (the initial broadcast)."""
    world = dist.get_world_size()
    size = shard_group_size(parallel, shard_group, world)
    if parallel == "hybrid":
        mesh = init_device_mesh(device.type, (world // size, size), mesh_dim_names=("replicate", "shard"))
    else:
        mesh = init_device_mesh(device.type, (world,), mesh_dim_names=("shard",))
    start = {name: t.detach().clone() for name, t in model.state_dict().items()}
    sharded = copy.deepcopy(model)
    for module in sharded.modules():
        if module is not sharded and any(True for _ in module.parameters(recurse=False)):
            fully_shard(module, mesh=mesh)
    fully_shard(sharded, mesh=mesh)
    load_full(sharded, start, bug, from_rank0=bug != "no_init_broadcast")
    return sharded


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor shard (a collective: every process calls it, in the same order)."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def full_state(obj: Any) -> Any:
    """``obj`` (a state dict, nested) with every DTensor gathered into a full CPU tensor."""
    if isinstance(obj, dict):
        return {k: full_state(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(full_state(v) for v in obj)
    if isinstance(obj, DTensor):
        return obj.full_tensor().detach().cpu()
    return obj


def shard_like(tensor: torch.Tensor, like: torch.Tensor, *, from_rank0: bool = True) -> torch.Tensor:
    """``tensor`` (full) cut into the shards ``like`` (a DTensor) holds; rank 0's values when ``from_rank0``."""
    tensor = tensor.to(like.device, like.dtype)
    if not isinstance(like, DTensor):
        return tensor
    source = 0 if from_rank0 else None  # None: every process keeps its own values' shard
    return distribute_tensor(tensor, like.device_mesh, like.placements, src_data_rank=source)


def load_full(model: nn.Module, state: dict[str, torch.Tensor], bug: str = "none", *, from_rank0: bool = True) -> None:
    """Copy a full state dict into ``model``'s shards (and its unsharded buffers)."""
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    if missing := sorted(set(model.state_dict()) ^ set(state)):
        raise ConfigError(f"the saved state does not match the model: {missing[:5]} differ; it belongs to another "
                          "model or recipe")  # fmt: skip
    with torch.no_grad():
        for name, value in state.items():
            tensor = tensors[name]
            if bug == "fsdp_shard_order" and isinstance(tensor, DTensor) and value.ndim and value.shape[0] > 1:
                # the injected bug: the shards reassembled rotated by one shard (a wrong offset per process)
                value = value.roll(tensor.to_local().shape[0] or 1, 0)
            placed = shard_like(value, tensor, from_rank0=from_rank0)
            target = tensor.to_local() if isinstance(tensor, DTensor) else tensor
            target.copy_(placed.to_local() if isinstance(placed, DTensor) else placed)
            if not isinstance(tensor, DTensor) and from_rank0 and dist.get_world_size() > 1:
                dist.broadcast(target, 0)  # buffers are not sharded: every process takes rank 0's


def load_optimizer(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a full optimizer state (from :func:`full_state`) into an optimizer over sharded parameters."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    saved = dict(state["state"])
    for index, values in saved.items():
        p = params[int(index)]
        saved[index] = {k: shard_like(v, p) if isinstance(v, torch.Tensor) and v.shape == p.shape else v
                        for k, v in values.items()}  # fmt: skip
    optimizer.load_state_dict({**state, "state": saved})


def set_gradient_sync(net: nn.Module, sync: bool) -> None:
    """FSDP's ``no_sync``: gradients of a process's earlier workers accumulate, its last one reduces them all."""
    if isinstance(net, FSDPModule):
        net.set_requires_gradient_sync(sync)


def layer_norm(part: torch.Tensor, like: torch.Tensor, *, shard_local: bool = False) -> torch.Tensor:
    """The L2 norm of a whole layer from this process's ``part`` of it, where ``like`` (the parameter) is a
    DTensor shard: the squared sums of the shards, summed over the processes that split it.
    ``shard_local``: the injected bug (the shard's own norm)."""
    squared = part.float().pow(2).sum()
    if isinstance(like, DTensor) and not shard_local:
        for dim, placement in enumerate(like.placements):
            if placement.is_shard():
                dist.all_reduce(squared, group=like.device_mesh.get_group(dim))
    return squared.sqrt()


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of a DTensor (the tensor itself otherwise), for in-place arithmetic."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor

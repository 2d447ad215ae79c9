"""Gradient compression as DDP communication hooks (``DistributedDataParallel.register_comm_hook``), each
counting the bytes it hands to the collectives.

- ``none``: torch's all-reduce (fp32), counted.
- ``fp16`` / ``bf16``: torch's ``fp16_compress_hook`` / ``bf16_compress_hook`` (cast, all-reduce, cast back).
- ``quantize``: DAT's stochastic ``bits``-bit quantiser per gradient tensor (:func:`..compression.quantize`):
  every rank all-gathers the codes (one byte per element) and the norms, dequantises each rank's tensor and
  averages them in rank order in fp32, so every rank ends with the same gradient.
- ``natural``: natural compression per element (:func:`..compression.natural_compress`), all-gathered as bf16
  (powers of two are exact there) and averaged the same way.

The compressors draw from a generator seeded by ``(seed, rank, step, bucket index)``: set
:attr:`HookState.step` before each backward and a run is reproducible.
"""

# no ``from __future__ import annotations``: DDP checks the hooks' annotations at runtime (``dist.GradBucket``)

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from advsuite.errors import ConfigError
from advsuite.seeding import derive_seed

from .compression import Quantized, dequantize, natural_compress, quantize

COMPRESSIONS = ("none", "fp16", "bf16", "quantize", "natural")

Hook = Callable[[Any, dist.GradBucket], torch.futures.Future[torch.Tensor]]


@dataclass
class HookState:
    """What a hook needs and what it counted: ``bytes_sent`` per step (this rank's payload to the collectives)."""

    group: dist.ProcessGroup | None
    compression: str
    bits: int = 7
    seed: int = 0
    step: int = 0
    bytes_sent: dict[int, int] = field(default_factory=dict)
    #: an injected bug (advsuite.distributed.bugs) the hook carries out: grad_sum | grad_double_avg; else "none"
    bug: str = "none"

    def count(self, n: int) -> None:
        self.bytes_sent[self.step] = self.bytes_sent.get(self.step, 0) + n

    def generator(self, bucket: int, device: torch.device) -> torch.Generator:
        seed = derive_seed(self.seed, "compress", dist.get_rank(self.group), self.step, bucket)
        return torch.Generator(device=device).manual_seed(seed)


def make_hook(
    compression: str, group: dist.ProcessGroup | None = None, bits: int = 7, seed: int = 0, bug: str = "none"
) -> tuple[HookState, Hook]:
    """``(state, hook)`` for ``ddp.register_comm_hook(state, hook)``."""
    if compression not in COMPRESSIONS:
        raise ConfigError(f"unknown gradient compression {compression!r}; choose from {', '.join(COMPRESSIONS)}")
    if compression == "quantize":
        quantize(torch.zeros(1), bits)  # a bad ``bits`` fails here, before training
    state = HookState(group, compression, bits, seed, bug=bug)
    if bug in ("grad_sum", "grad_double_avg") and compression == "none":
        return state, _buggy_allreduce
    hooks: dict[str, Hook] = {
        "none": _torch_hook(default_hooks.allreduce_hook, 4),
        "fp16": _torch_hook(default_hooks.fp16_compress_hook, 2),
        "bf16": _torch_hook(default_hooks.bf16_compress_hook, 2),
        "quantize": _gathering_hook(_quantized),
        "natural": _gathering_hook(_natural),
    }
    return state, hooks[compression]


def _torch_hook(hook: Callable[..., torch.futures.Future[torch.Tensor]], element_bytes: int) -> Hook:
    def counted(state: HookState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        state.count(bucket.buffer().numel() * element_bytes)
        return hook(state.group, bucket)

    return counted


def _buggy_allreduce(state: HookState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """The injected bugs ``grad_sum`` (no division by the world size) and ``grad_double_avg`` (divided twice)."""
    world = dist.get_world_size(state.group)
    buffer = bucket.buffer()
    state.count(buffer.numel() * 4)
    if state.bug == "grad_double_avg":
        buffer.div_(world * world)
    work = dist.all_reduce(buffer, group=state.group, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def _quantized(state: HookState, grad: torch.Tensor, gen: torch.Generator) -> tuple[list[torch.Tensor], Callable]:
    q = quantize(grad, state.bits, gen)
    state.count(q.payload_bytes)
    return [q.codes.flatten(), q.norm.reshape(1)], lambda codes, norm: dequantize(Quantized(codes, norm[0], state.bits))


def _natural(state: HookState, grad: torch.Tensor, gen: torch.Generator) -> tuple[list[torch.Tensor], Callable]:
    sent = natural_compress(grad, gen).to(torch.bfloat16).flatten()
    state.count(sent.numel() * 2)
    return [sent], lambda values: values.float()


def _gathering_hook(encode: Callable[..., tuple[list[torch.Tensor], Callable]]) -> Hook:
    """Each gradient tensor encoded, all-gathered, decoded per rank and averaged in rank order (fp32)."""

    def hook(state: HookState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        world = dist.get_world_size(state.group)
        gen = state.generator(bucket.index(), bucket.buffer().device)
        averaged = []
        for grad in bucket.gradients():
            parts, decode = encode(state, grad, gen)
            gathered = []
            for part in parts:
                out = [torch.empty_like(part) for _ in range(world)]
                dist.all_gather(out, part, group=state.group)
                gathered.append(out)
            total = torch.zeros(grad.numel(), dtype=torch.float32, device=grad.device)
            for rank in range(world):
                total += decode(*(g[rank] for g in gathered)).flatten()
            averaged.append((total / world).to(grad.dtype))
        future: torch.futures.Future[torch.Tensor] = torch.futures.Future()
        future.set_result(torch.cat(averaged))
        return future

    return hook

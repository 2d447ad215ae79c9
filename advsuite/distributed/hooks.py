"""Gradient compression as DDP communication hooks (``DistributedDataParallel.register_comm_hook``), each
counting the bytes it hands to the collectives.

- ``none``: torch's all-reduce (fp32), counted.
- ``fp16`` / ``bf16``: torch's ``fp16_compress_hook`` / ``bf16_compress_hook`` (cast, all-reduce, cast back).
- ``quantize``: DAT's stochastic ``bits``-bit quantiser per gradient tensor (:func:`..compression.quantize`):
  every rank all-gathers the codes (one byte per element) and the norms, dequantises each rank's tensor and
  averages them in rank order in fp32, so every rank ends with the same gradient.
- ``natural``: natural compression per element (:func:`..compression.natural_compress`), all-gathered as bf16
  (powers of two are exact there) and averaged the same way.

The compressors draw from a generator seeded by ``(seed, rank, step, parameter name)``: set
:attr:`HookState.step` before each backward and a run is reproducible, and the single-process reference
replays the draws. :attr:`HookState.record` sees each process's gradient before it is compressed (the tracer's
``local_grad``).
"""

# no ``from __future__ import annotations``: DDP checks the hooks' annotations at runtime (``dist.GradBucket``)

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from advsuite.errors import ConfigError

from .compression import compression_generator, encode, mean_of_decoded, quantize

COMPRESSIONS = ("none", "fp16", "bf16", "quantize", "natural")
#: the compressors that gather every process's encoded gradient (the reference replays them; see :mod:`.dat`)
GATHERING = ("quantize", "natural")

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
    #: an injected bug (advsuite.distributed.bugs) the hook carries out: grad_sum | grad_double_avg |
    #: compressor_biased; else "none"
    bug: str = "none"
    #: each parameter's canonical name, by ``id``: the compressors' draws are named by it
    names: dict[int, str] = field(default_factory=dict)
    #: called with (name, this process's gradient) before it is compressed (the tracer's ``local_grad``)
    record: Callable[[str, torch.Tensor], None] | None = None

    def count(self, n: int) -> None:
        self.bytes_sent[self.step] = self.bytes_sent.get(self.step, 0) + n


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
        "quantize": _gathering_hook,
        "natural": _gathering_hook,
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


def _gathering_hook(state: HookState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """``quantize`` / ``natural``: each gradient tensor encoded, all-gathered, decoded per rank and averaged in
    rank order (fp32), so every rank ends with the same gradient."""
    world, rank = dist.get_world_size(state.group), dist.get_rank(state.group)
    averaged = []
    for param, grad in zip(bucket.parameters(), bucket.gradients(), strict=True):
        name = state.names.get(id(param), str(id(param)))
        if state.record is not None:
            state.record(name, grad)
        gen = compression_generator(state.seed, rank, state.step, name, grad.device)
        parts, decode, sent = encode(state.compression, grad, state.bits, gen, biased=state.bug == "compressor_biased")
        state.count(sent)
        gathered = []
        for part in parts:
            out = [torch.empty_like(part) for _ in range(world)]
            dist.all_gather(out, part, group=state.group)
            gathered.append(out)
        decoded = [decode(*(g[r] for g in gathered)) for r in range(world)]
        averaged.append(mean_of_decoded(decoded, grad).flatten())
    future: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    future.set_result(torch.cat(averaged))
    return future

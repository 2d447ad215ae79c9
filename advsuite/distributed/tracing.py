"""Trace a few DAT steps on every process, run the single-process reference on the same start, and compare.

:func:`traced_steps` runs on each rank (under torchrun, or in processes :func:`iter_spawned` starts) and
returns that rank's trace; :func:`merge_ranks` joins them on rank 0 (each worker's tensors from the rank that
ran it; the replicated ones, weights and buffers, from rank 0, after checking every other rank holds the same
values); :func:`reference_steps` replays the steps in one process; :func:`trace_verdict` does all of it.
"""

from __future__ import annotations

import copy
import gc
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from advsuite.errors import ConfigError

from .checker import START, Comparison, Verdict, compare, relative_error, tolerance
from .context import DistContext
from .dat import DatStepper
from .hooks import GATHERING
from .recipe import DatRecipe
from .tracer import Trace, TraceKey, Tracer, canonical_name

#: kinds every rank holds a copy of (they must agree across ranks); the rest belong to one worker's rank
REPLICATED = ("param_grad", "param", "buffer")


def _run(stepper: DatStepper, tracer: Tracer, steps: int, start_each_step: Any = None) -> Trace:
    """``steps`` traced steps; ``start_each_step(step)`` runs before each (the reference's re-synchronisation)."""
    model = stepper.model  # under FSDP, the sharded copy (its parameters are traced gathered)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model.train()
        step = 0
        for epoch in range(stepper.recipe.epochs):
            for batch in stepper.plan.epoch(epoch):
                if step == steps:
                    break
                if start_each_step is not None:
                    start_each_step(step)
                with tracer.step(step):
                    if step == 0:
                        with tracer.micro(0):
                            for name, p in model.named_parameters():
                                tracer.record(f"init/{name}", "param", p)
                    stepper.step(step, batch)
                step += 1
    tracer.close()
    return tracer.trace()


def traced_steps(
    model: nn.Module, recipe: DatRecipe, x: torch.Tensor, y: torch.Tensor, seed: int, steps: int, ctx: DistContext
) -> tuple[Trace, dict[str, torch.Tensor]]:
    """``steps`` DAT steps of this rank, traced; also the initial state rank 0 starts from (for the reference)."""
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    stepper = DatStepper(model, recipe, x, y, seed=seed, ctx=ctx)
    tracer = Tracer(stepper.net, stepper.optimizer)
    stepper.tracer = tracer
    return _run(stepper, tracer, steps), init


def reference_steps(
    model: nn.Module,
    init: dict[str, torch.Tensor],
    recipe: DatRecipe,
    x: torch.Tensor,
    y: torch.Tensor,
    seed: int,
    steps: int,
    candidate: Trace | None = None,
    perturb: float = 0.0,
    processes: int = 1,
) -> Trace:
    """The same steps in this process: every worker in turn, no DDP, no injected bug, rank 0's initial state.

    With ``candidate`` (the distributed run's merged trace), every step starts from where the candidate's
    previous step ended (its weights and buffers) and uses its adversarial examples, so each step is compared
    from the same state and round-off cannot compound across steps (a ReLU or max-pool that flips on a
    last-bit difference would otherwise make a later step look divergent), and, under a gathering compressor,
    each of its ``processes``' gradients before the exchange (stochastic rounding is discontinuous too; the
    reference replays the compressors' draws on them). ``perturb``: the weights are scaled
    by ``1 + perturb·N(0, 1)`` at the start of every step, the noise-floor run."""
    model = copy.deepcopy(model)
    model.load_state_dict(init)
    clean = DatRecipe(**{**recipe.to_dict(), "bug": "none"})
    stepper = DatStepper(model, clean, x, y, seed=seed, ctx=None, substitutes=substitutes(candidate),
                         processes=processes)  # fmt: skip
    tracer = Tracer(model, stepper.optimizer)
    stepper.tracer = tracer
    gen = torch.Generator().manual_seed(1)
    end = recipe.workers  # the micro index of what happens after every worker

    def start(step: int) -> None:
        with torch.no_grad():
            if candidate is not None and step > 0:
                state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
                for name, tensor in state.items():
                    for kind in ("param", "buffer"):
                        key = str(TraceKey(step - 1, end, name, kind))
                        if key in candidate.tensors:
                            tensor.copy_(candidate.tensors[key])
            if perturb:
                for name, p in model.named_parameters():
                    p.mul_(1 + perturb * torch.randn(p.shape, generator=gen).to(p.device, p.dtype))
                    start_key = TraceKey(step, 0, f"{START}/{canonical_name(name)}", "param")  # as the tracer keys
                    starts[str(start_key)] = p.detach().to("cpu", copy=True)

    starts: dict[str, torch.Tensor] = {}
    trace = _run(stepper, tracer, steps, start)
    trace.tensors.update(starts)  # the noise run's own (perturbed) starting weights: its updates are taken from them
    return trace


def merge_ranks(traces: list[Trace]) -> tuple[Trace, list[Comparison]]:
    """One trace in canonical form, and each replicated tensor of ranks 1… checked against rank 0's."""
    merged = Trace(dict(traces[0].tensors), dict(traces[0].layers))
    replicas: list[Comparison] = []
    n_layers = max(merged.layers.values(), default=1)
    for rank, trace in enumerate(traces[1:], start=1):
        for key, tensor in trace.tensors.items():
            kind = TraceKey.parse(key).kind
            if kind in REPLICATED or (key.endswith(":param") and "/init/" in key):
                if key in merged.tensors:
                    layer = merged.layer_of(key)
                    error = relative_error(tensor, merged.tensors[key])
                    replicas.append(Comparison(f"{key} (rank {rank} vs rank 0)", layer, error,
                                               tolerance(layer, n_layers, tensor.dtype)))  # fmt: skip
            else:
                merged.tensors[key] = tensor
    order = sorted(merged.tensors, key=lambda k: (TraceKey.parse(k).step, TraceKey.parse(k).micro))
    merged.tensors = {k: merged.tensors[k] for k in order}
    return merged, replicas


#: what the reference takes from the candidate once it has compared it (see :func:`reference_steps`)
SUBSTITUTED = ("adv_input", "local_grad")


def substitutes(trace: Trace | None) -> dict[str, torch.Tensor] | None:
    if trace is None:
        return None
    return {k: t for k, t in trace.tensors.items() if TraceKey.parse(k).kind in SUBSTITUTED}


def check_traceable(recipe: DatRecipe) -> None:
    """torch's fp16/bf16 hooks cast and all-reduce in an order of gloo's or NCCL's the reference cannot replay."""
    if recipe.compression not in ("none", *GATHERING):
        raise ConfigError(
            f"tracing a run with train.compression={recipe.compression} is not supported: torch's cast-and-all-reduce "
            f"hook rounds in the collective's own order; trace with compression none, {' or '.join(GATHERING)}"
        )


def trace_verdict(
    model: nn.Module,
    init: dict[str, torch.Tensor],
    recipe: DatRecipe,
    x: torch.Tensor,
    y: torch.Tensor,
    seed: int,
    steps: int,
    traces: list[Trace],
    *,
    k: float = 4.0,
    c: float = 1.03,
) -> Verdict:
    """The ranks' traces against the reference; replica disagreements count as divergences where they occur."""
    check_traceable(recipe)
    candidate, replicas = merge_ranks(traces)
    world = len(traces)
    reference = reference_steps(model, init, recipe, x, y, seed, steps, candidate, processes=world)
    # the floor perturbs at fp32 ε even under bf16: what legitimately differs between the runs from one step to
    # the next is fp32 round-off in the reductions, carried in the fp32 weights (bf16 rounding of activations
    # is a deterministic function of them)
    eps = torch.finfo(torch.float32).eps
    noise = reference_steps(model, init, recipe, x, y, seed, steps, candidate, perturb=eps, processes=world)
    low = torch.bfloat16 if recipe.precision == "bf16" else None
    verdict = compare(reference, candidate, noise=noise, k=k, c=c, compute_dtype=low, updates=True)
    if replicas:  # each at its place in execution order: after the same key of rank 0
        position = {c.key: i for i, c in enumerate(verdict.comparisons)}
        merged = sorted(
            [(position[c.key], 0, c) for c in verdict.comparisons]
            + [(position.get(c.key.split(" (rank")[0], len(position)), 1, c) for c in replicas],
            key=lambda t: (t[0], t[1]),
        )
        verdict.comparisons = [c for *_, c in merged]
    return verdict


# ----------------------------------------------------------------------------------- spawned processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, payload: dict[str, Any], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ctx = DistContext(rank, world, torch.device("cpu"), owns_group=False)
        for i, recipe in enumerate(payload["recipes"]):  # one process group for every scenario: one start-up
            model = copy.deepcopy(payload["model"])
            result = traced_steps(model, recipe, payload["x"], payload["y"], payload["seed"], payload["steps"], ctx)
            torch.save(result, Path(out) / f"s{i}-rank{rank}.pt")  # to disk at once: traces are large
            del result, model
            gc.collect()
    finally:
        dist.destroy_process_group()


def iter_spawned(
    model: nn.Module,
    recipes: list[DatRecipe],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    seed: int,
    steps: int,
    world: int,
) -> Iterator[tuple[list[Trace], dict[str, torch.Tensor]]]:
    """Start ``world`` gloo processes that trace ``steps`` DAT steps of each recipe; then yield, recipe by recipe,
    the ranks' traces and rank 0's initial state (one recipe's traces in memory at a time)."""
    payload = {"model": model, "recipes": recipes, "x": x, "y": y, "seed": seed, "steps": steps}
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_worker, args=(world, _free_port(), payload, out), nprocs=world, join=True)
        for i in range(len(recipes)):
            saved = [torch.load(Path(out) / f"s{i}-rank{r}.pt", weights_only=False) for r in range(world)]
            yield [trace for trace, _ in saved], saved[0][1]

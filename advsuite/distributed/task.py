"""``task=trace``: DAT steps on several processes against the single-process reference, with a verdict.

    python -m advsuite task=trace train=dat train.workers=2                      # starts 2 gloo processes
    torchrun --standalone --nproc-per-node 2 -m advsuite task=trace train=dat    # uses torchrun's
    python -m advsuite task=trace train=dat train.bug=grad_sum task.strict=true  # exits 1 at the first divergence

The model is the configured one at its initial weights (fixed by ``seed``), the data the first
``task.train_images`` of the configured training split. ``report.md`` and ``errors.png`` land in the run folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from advsuite.configs import to_plain
from advsuite.data.bundle import DataBundle
from advsuite.errors import AdvsuiteError, ConfigError
from advsuite.training import Recipe
from advsuite.validation import check_int, check_number

from .bugs import check_bug
from .context import init_context
from .dat import has_batchnorm, training_tensors
from .plan import GlobalBatches, workers_per_rank
from .recipe import DatRecipe
from .tracing import check_traceable, iter_spawned, trace_verdict, traced_steps


class DivergenceError(AdvsuiteError):
    """``task.strict``: the distributed run does not compute what the reference does."""


def run_trace(cfg: DictConfig) -> dict[str, Any]:
    t = cfg.task
    for key in ("steps", "world_size", "train_images"):
        check_int("task trace", key, t[key], 1)
    for key in ("k", "c"):
        check_number("task trace", key, t[key])
    recipe = Recipe.coerce(to_plain(cfg.train))
    if not isinstance(recipe, DatRecipe):
        raise ConfigError("task=trace traces distributed adversarial training: add train=dat")
    data = instantiate(cfg.dataset)
    if not isinstance(data, DataBundle):
        raise ConfigError(f"dataset config must instantiate a DataBundle, got {type(data).__name__}")
    from advsuite.models.zoo import build_untrained, parse_spec

    seed = int(cfg.seed)
    model, _ = build_untrained(parse_spec(to_plain(cfg.model)), data, seed)
    x, y = training_tensors(data, recipe, seed)
    x, y = x[: int(t.train_images)], y[: int(t.train_images)]
    steps = int(t.steps)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    world = world if world > 1 else int(t.world_size)
    check_traceable(recipe)  # checked here, before any process starts
    workers_per_rank(recipe.batch_size, recipe.workers, world)
    check_bug(recipe, world, has_batchnorm(model))
    GlobalBatches(len(x), recipe.batch_size, recipe.workers, seed)  # enough images for one global batch
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun: every rank traces, rank 0 compares
        ctx = init_context(torch.device("cpu"))
        try:
            trace, init = traced_steps(model, recipe, x, y, seed, steps, ctx)
            gathered: list[Any] = [None] * ctx.world_size if ctx.is_writer else []
            dist.gather_object(trace, gathered if ctx.is_writer else None, dst=0)
        finally:
            ctx.close()
        if not ctx.is_writer:
            return {}
        traces = gathered
    else:
        [(traces, init)] = list(iter_spawned(model, [recipe], x, y, seed=seed, steps=steps, world=world))
    verdict = trace_verdict(model, init, recipe, x, y, seed, steps, traces, k=float(t.k), c=float(t.c))
    out = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path.cwd() / "trace"
    files = verdict.write(out)
    print(f"trace ({len(traces)} processes, {steps} steps, bug={recipe.bug}): {verdict.summary()}")
    first = verdict.first_divergent
    report = out / files["report"]
    if first is not None and bool(t.strict):
        raise DivergenceError(
            f"the distributed run diverges from the reference first at {first.key}: relative error "
            f"{first.error:.3g} > bound {first.tolerance:.3g} (report: {report})"
        )
    print(f"report: {report}")
    return {
        "verdict": "equivalent" if first is None else "divergent",
        "first_divergence": first.key if first else None,
        "n_tensors": len(verdict.comparisons),
        "report": str(report),
    }

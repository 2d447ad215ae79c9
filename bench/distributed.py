"""Distributed adversarial training: does tracing find every bug without false alarms, does DAT train
robust models, and what do processes, tracing and determinism cost on this machine.

Sections (``--section``, default all):

- ``tracing`` (``--layout ddp|fsdp|hybrid``, default all): the `cifarcnn` CIFAR-10 model (four conv +
  BatchNorm blocks) at its initial weights, 2 DAT steps of a 16-image global batch on 2 gloo processes (4 for
  hybrid sharding), traced against the single-process reference (every activation and its gradient is kept:
  about 130 MB per scenario and process at this size). Correct runs over seeds 0, 1, 2 in fp32 and bf16,
  with one and two workers per process (DDP also with each gathering compressor): the verdict, and the
  largest error ÷ bound over every tensor (the margin on the clean side). Every injectable bug that can act
  in the layout, in fp32 and bf16 (seed 0): detected?, the first divergent tensor, its error ÷ bound (the
  margin on the bug side), and whether it is the tensor the bug's table entry names (localised).
- ``overhead``: seconds per DAT step in one process without the tracer, with it (every kind), and with it
  on parameters only.
- ``throughput``: 20 DAT steps (global batch 128, PGD 10 steps) of `smallcnn` on CIFAR-10 in one process
  and in two (torchrun; DDP, then FSDP): images per second; then one process with ``deterministic=true``.
- ``quality``: CIFAR-10 (a 10k-image subset), `smallcnn`, ε 8/255, 10 epochs at a global batch of 512:
  single-process PGD-AT (``train=pgd_at``, the standard recipe's SGD; and DAT's recipe with one worker, the
  control) against DAT-PGD on 2 processes (LALR), DAT with SGD, DAT-FGSM and
  DAT with the quantiser or natural compression: clean and PGD / AutoAttack robust accuracy on 200 test
  images, bytes per step, training time.

    export ADVSUITE_DATA=/work/shared/data
    python bench/distributed.py --section tracing
    python bench/distributed.py --markdown

Results accumulate in ``--json`` (default bench/results/distributed.json), keyed ``section/name``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from advsuite.configs import plugin_overrides, to_plain
from advsuite.device import provenance
from advsuite.distributed.bugs import BUGS
from advsuite.distributed.dat import training_tensors
from advsuite.distributed.recipe import DatRecipe
from advsuite.distributed.tracing import iter_spawned, trace_verdict
from advsuite.models.zoo import _build, parse_spec
from advsuite.training import Recipe

ROOT = Path(__file__).resolve().parents[1]
#: the traced scenarios' recipe: small enough for seconds per scenario, a real model and real images
TRACE = {"trainer": "dat", "epochs": 1, "batch_size": 16, "workers": 2, "adversarial": "pgd", "warmup_epochs": 0.0,
         "adv_eps": 8 / 255, "adv_steps": 3, "adv_step_size": 2 / 255, "optimizer": "lalr", "lr": 0.01,
         "weight_decay": 1e-4}  # fmt: skip
TRACE_STEPS = 2


def _model_and_data(seed: int) -> tuple[Any, Any]:
    cfg = compose("config", plugin_overrides(["dataset=cifar10_npz", "model=cifarcnn"]))
    data = instantiate(cfg.dataset)
    model, _ = _build(parse_spec(to_plain(cfg.model)), data, seed)
    return model, data


#: how the traced runs lay the model over processes: (name prefix, recipe changes, processes)
LAYOUTS = {
    "ddp": ("", {}, 2),
    "fsdp": ("fsdp/", {"parallel": "fsdp"}, 2),
    "hybrid": ("hybrid/", {"parallel": "hybrid", "shard_group": 2, "workers": 4}, 4),
}


def _trace_scenarios(layout: str) -> list[tuple[str, int, DatRecipe]]:
    """Clean runs over 3 seeds, fp32 and bf16, 1 and 2 workers per process (DDP also with each gathering
    compressor); every bug that can act (seed 0). Hybrid (4 processes on 2 cores): clean seed 0 and the
    sharding bugs only."""
    prefix, changes, world = LAYOUTS[layout]
    out = []
    for precision in ("fp32", "bf16"):
        base = {**TRACE, "precision": precision, **changes}
        for seed in (0, 1, 2) if layout != "hybrid" else (0,):
            for per_process in (1, 2):
                workers = world * per_process
                out.append((f"{prefix}clean/{precision}/w{workers}/seed{seed}", seed,
                            Recipe.coerce({**base, "workers": workers})))  # fmt: skip
            for compression in ("quantize", "natural") if layout == "ddp" else ():
                out.append((f"clean/{precision}/{compression}/seed{seed}", seed,
                            Recipe.coerce({**base, "compression": compression})))  # fmt: skip
        for bug, spec in BUGS.items():
            needs = spec.needs.split("+")
            if bug == "none" or (layout != "ddp" and "ddp" in needs) or (layout == "ddp" and "sharded" in needs):
                continue
            if layout == "hybrid" and "sharded" not in needs:
                continue
            workers = 2 * world if bug == "accum_unscaled" else base["workers"]
            for compression in ("quantize", "natural") if "compressed" in needs else ("none",):
                if compression != "none" and layout != "ddp":
                    continue
                name = f"{prefix}bug/{precision}/{bug}" + (f"/{compression}" if compression != "none" else "")
                out.append(
                    (name, 0, Recipe.coerce({**base, "workers": workers, "bug": bug, "compression": compression}))
                )
    return out  # type: ignore[return-value]


def tracing(save: Any, layouts: list[str]) -> None:
    for layout in layouts:
        world = LAYOUTS[layout][2]
        for seed in (0, 1, 2):
            todo = [(name, recipe) for name, s, recipe in _trace_scenarios(layout) if s == seed]
            if not todo:
                continue
            _trace_and_save(save, todo, seed, world)


def _trace_and_save(save: Any, todo: list[tuple[str, DatRecipe]], seed: int, world: int) -> None:
    model, data = _model_and_data(seed)
    x, y = training_tensors(data, todo[0][1], seed)
    x, y = x[:512], y[:512]
    runs = iter_spawned(model, [r for _, r in todo], x, y, seed=seed, steps=TRACE_STEPS, world=world)
    for (name, recipe), (traces, init) in zip(todo, runs, strict=True):
        verdict = trace_verdict(model, init, recipe, x, y, seed, TRACE_STEPS, traces)
        worst = max(verdict.comparisons, key=lambda c: c.ratio)
        first = verdict.first_divergent
        flips = [c.error for c in verdict.comparisons if ":adv_input" in c.key]
        row: dict[str, Any] = {
            "verdict": "equivalent" if first is None else "divergent",
            "n_tensors": len(verdict.comparisons),
            "max_ratio": worst.ratio,
            "max_ratio_key": worst.key,
            "processes": world,
            "max_adv_flip": max(flips, default=0.0),
        }
        if first is not None:
            path, kind = BUGS[recipe.bug].site
            localised = recipe.bug != "none" and f":{kind}" in first.key and path in first.key
            row |= {"first": first.key, "first_ratio": first.ratio, "first_floor": first.noise_floor,
                    "localised": localised}  # fmt: skip
        save(f"tracing/{name}", row)


def _train_command(*extra: str, processes: int = 1, recipe: str = "dat") -> list[str]:
    base = ["-m", "advsuite", "task=train", f"train={recipe}", "dataset=cifar10_npz", "model=smallcnn", *extra]
    if processes == 1:
        return [sys.executable, *base]
    return [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc-per-node", str(processes),
            *base]  # fmt: skip


def _run_training(command: list[str], home: str) -> dict[str, Any]:
    env = {**os.environ, "ADVSUITE_HOME": home}
    start = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=3600)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    meta = json.loads(next(Path(home).glob("zoo/**/meta.json")).read_text())
    metrics = meta["train_metrics"]
    # the standard trainer (the PGD-AT baseline) reports neither throughput nor bytes: computed, and 0 sent
    images_per_s = metrics.get("images_per_s", metrics["n_train"] * metrics["epochs"] / metrics["train_seconds"])
    return {"wall_s": wall, "images_per_s": images_per_s, "train_seconds": metrics["train_seconds"],
            "clean_accuracy": metrics["test_accuracy"], "bytes_per_step": metrics.get("bytes_per_step", 0.0),
            "world_size": metrics.get("world_size", 1)}  # fmt: skip


def throughput(save: Any) -> None:
    steps = ["train.epochs=1", "train.train_subset=2560", "train.batch_size=128", "train.warmup_epochs=0",
             "train.test_subset=256"]  # fmt: skip
    runs = {
        "1_process": (_train_command(*steps), {}),
        "2_processes": (_train_command(*steps, processes=2), {"OMP_NUM_THREADS": "1"}),
        "2_processes_fsdp": (_train_command(*steps, "++train.parallel=fsdp", processes=2), {"OMP_NUM_THREADS": "1"}),
        "1_process_deterministic": (_train_command(*steps, "deterministic=true"), {}),
    }
    for name, (command, env) in runs.items():
        with tempfile.TemporaryDirectory() as home:
            os.environ.update(env)
            try:
                save(f"throughput/{name}", _run_training(command, home) | {"steps": 20, "global_batch": 128})
            finally:
                for key in env:
                    os.environ.pop(key, None)


def overhead(save: Any) -> None:
    """Seconds per DAT step (smallcnn, CIFAR-10, global batch 128, one process) without and with the tracer:
    all kinds, and parameters only; 10 steps each after 2 warm-up steps, alternated three times."""
    from advsuite.distributed.context import init_context
    from advsuite.distributed.dat import DatStepper
    from advsuite.distributed.tracer import Tracer

    cfg = compose("config", plugin_overrides(["dataset=cifar10_npz", "model=smallcnn"]))
    data = instantiate(cfg.dataset)
    recipe = Recipe.coerce({**TRACE, "batch_size": 128, "adv_steps": 10})
    x, y = training_tensors(data, recipe, 0)
    ctx = init_context(torch.device("cpu"))
    times: dict[str, list[float]] = {"untraced": [], "all kinds": [], "parameters only": []}
    try:
        for _ in range(3):
            for name in times:
                model, _ = _build(parse_spec(to_plain(cfg.model)), data, 0)
                stepper = DatStepper(model, recipe, x, y, seed=0, ctx=ctx)
                kinds = {"all kinds": None, "parameters only": ("param_grad", "param")}.get(name, ())
                tracer = None if name == "untraced" else Tracer(stepper.net, stepper.optimizer, **(
                    {"kinds": kinds} if kinds else {}))  # fmt: skip
                stepper.tracer = tracer
                batches = stepper.plan.epoch(0)
                model.train()
                for step in range(12):
                    if step == 2:
                        start = time.perf_counter()
                    with tracer.step(step) if tracer else contextlib.nullcontext():
                        stepper.step(step, batches[step])
                times[name].append((time.perf_counter() - start) / 10)
    finally:
        ctx.close()
    for name, values in times.items():
        save(f"overhead/{name}", {"s_per_step": sorted(values)[1], "all": values, "global_batch": 128})


QUALITY = ["train.epochs=10", "train.train_subset=10000", "train.batch_size=512", "train.test_subset=2000"]


def quality(save: Any, only: list[str] | None) -> None:
    runs = {
        "pgd_at_1_process": _train_command(*QUALITY, "train.adv_steps=10", recipe="pgd_at"),
        # the control for "does distributing change the model": DAT's recipe (LALR, CE(adv) + CE(clean)) as
        # single-process PGD-AT, one worker taking the whole global batch
        "pgd_at_dat_recipe_1_process": _train_command(*QUALITY, "++train.workers=1"),
        "dat_pgd_lalr_2_processes": _train_command(*QUALITY, processes=2),
        "dat_pgd_sgd_2_processes": _train_command(*QUALITY, "train.optimizer=sgd", "train.lr=0.05", processes=2),
        "dat_fgsm_2_processes": _train_command(
            *QUALITY, "train.adversarial=fast", "train.adv_step_size=null", processes=2
        ),
        "dat_quantize_2_processes": _train_command(*QUALITY, "train.compression=quantize", processes=2),
        "dat_natural_2_processes": _train_command(*QUALITY, "train.compression=natural", processes=2),
    }
    for name, command in runs.items():
        if only and name not in only:
            continue
        with tempfile.TemporaryDirectory() as home:
            row = _run_training(command, home)
            row |= _robust_accuracy(home, command)
            save(f"quality/{name}", row)


def _robust_accuracy(home: str, command: list[str]) -> dict[str, Any]:
    """PGD-20 and AutoAttack robust accuracy of the trained model on 200 test images (one process)."""
    train_args = [a for a in command if a.startswith(("train", "dataset", "model"))]
    train_args = [a for a in train_args if a != "task=train"]
    out = {}
    for attack, key in ((["attack=pgd", "attack.eps=[0.0313725]", "attack.steps=20"], "pgd20"),
                        (["attack=autoattack", "attack.eps=0.0313725"], "autoattack")):  # fmt: skip
        env = {**os.environ, "ADVSUITE_HOME": home}
        args = [sys.executable, "-m", "advsuite", "task=evaluate", *train_args, *attack, "n_samples=200"]
        done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=3600)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-3000:])
        record = max(Path(home).glob("runs/**/record.json"), key=lambda p: p.stat().st_mtime)
        out[key] = json.loads(record.read_text())["metrics"]["robust_accuracy"]
    return out


def markdown(runs: dict[str, Any]) -> str:
    header = "| run | verdict | first divergent tensor | error ÷ bound | localised | largest ÷ bound |"
    lines = ["### Tracing", "", header, "|---|---|---|---|---|---|"]
    for key, row in runs.items():
        if key.startswith("tracing/"):
            first = row.get("first", "–")
            ratio = f"{row['first_ratio']:.3g}" if "first_ratio" in row else "–"
            lines.append(f"| {key[8:]} | {row['verdict']} | {first} | {ratio} | {row.get('localised', '–')} | "
                         f"{row['max_ratio']:.3g} |")  # fmt: skip
    lines += ["", "### Throughput and quality", "", "| run | images/s | clean | PGD-20 | AutoAttack | bytes/step |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for key, row in runs.items():
        if key.startswith(("throughput/", "quality/")):
            lines.append(f"| {key} | {row['images_per_s']:.0f} | {row['clean_accuracy']:.3f} | {row.get('pgd20', '–')} "
                         f"| {row.get('autoattack', '–')} | {row['bytes_per_step']:.0f} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", action="append", help="tracing | overhead | throughput | quality (default all)")
    parser.add_argument("--only", action="append", help="quality: only these runs")
    parser.add_argument("--layout", action="append", choices=list(LAYOUTS), help="tracing: these layouts (default all)")
    parser.add_argument("--json", type=Path, default=Path("bench/results/distributed.json"))
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    runs = json.loads(args.json.read_text())["runs"] if args.json.exists() else {}
    if args.markdown:
        print(markdown(runs))
        return

    def save(key: str, row: dict[str, Any]) -> None:
        runs[key] = row | provenance()
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"runs": runs}, indent=1))
        print(key, {k: v for k, v in row.items() if not isinstance(v, dict)}, flush=True)

    sections = args.section or ["tracing", "overhead", "throughput", "quality"]
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    with initialize_config_module(config_module="advsuite.conf", version_base="1.3"):
        if "tracing" in sections:
            tracing(save, args.layout or list(LAYOUTS))
        if "overhead" in sections:
            overhead(save)
    if "throughput" in sections:
        throughput(save)
    if "quality" in sections:
        quality(save, args.only)
    print(markdown(runs))


if __name__ == "__main__":
    main()

"""train=dat and task=trace from the command line: with torchrun, without it, and the errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
#: a DAT run small enough for a test: 256 MNIST images, 2 steps of a 64-image global batch
TINY = ("train=dat", "train.epochs=1", "train.batch_size=64", "train.train_subset=128", "train.test_subset=64",
        "train.adv_steps=2", "train.adv_eps=0.1", "train.adv_step_size=0.05", "train.warmup_epochs=0")  # fmt: skip


def run(
    home: Path, *args: str, torchrun: bool = False, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    launcher = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "advsuite"] if torchrun else [
        sys.executable, "-m", "advsuite"]  # fmt: skip
    environ = {**os.environ, "ADVSUITE_HOME": str(home), "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([*launcher, *args], capture_output=True, text=True, env=environ, cwd=ROOT, timeout=600)


def test_torchrun_trains_into_the_zoo_and_one_process_finds_it(tmp_path: Path):
    # sharded over the two processes (FSDP); the zoo stores a plain model, under the same key as any layout
    trained = run(tmp_path, "task=train", *TINY, "train.parallel=fsdp", torchrun=True)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert trained.stdout.count("source: trained") == 1  # rank 0 reports, once
    again = run(tmp_path, "task=train", *TINY)  # no torchrun: the same recipe, found in the cache
    assert again.returncode == 0, again.stderr[-3000:]
    assert "source: cache" in again.stdout


def test_task_trace_equivalent_then_a_bug_named_with_its_tensor(tmp_path: Path):
    clean = run(tmp_path, "task=trace", *TINY, "task.steps=2", "task.train_images=128")
    assert clean.returncode == 0, clean.stderr[-3000:]
    assert "equivalent:" in clean.stdout
    buggy = run(tmp_path, "task=trace", *TINY, "task.steps=2", "task.train_images=128", "train.bug=grad_sum",
                "task.strict=true")  # fmt: skip
    assert buggy.returncode == 1
    assert "diverges from the reference first at s00000/m02/" in buggy.stderr and ":param_grad" in buggy.stderr


def test_a_bad_input_error_is_one_line(tmp_path: Path):
    out = run(tmp_path, "task=train", "train=dat", "train.bug=nope")
    assert out.returncode == 1
    assert "bug must be one of none, grad_sum" in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
    # task=trace checks what its processes would refuse before it starts them
    out = run(tmp_path, "task=trace", "train=dat", "train.bug=accum_unscaled")
    assert out.returncode == 1
    assert "cannot act in this run: it needs several workers per process" in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("args", "world", "message"),
    [
        (("task=evaluate",), "2", "only train=dat (task=train or task=trace) runs across processes"),
        (("task=train",), "2", "only train=dat (task=train or task=trace) runs across processes"),
        (("task=train", "train=dat"), "4", "4 processes cannot share train.workers=2 equally"),
        (("task=trace", "train=dat", "++train.workers=6", "++train.batch_size=96"), "4", "launch a divisor of 6"),
        (
            ("task=train", "train=dat", "++train.workers=4", "++train.parallel=hybrid", "++train.shard_group=3"),
            "4",
            "4 processes cannot be cut into shard groups of train.shard_group=3",
        ),
    ],
)
def test_a_launch_the_recipe_cannot_use_is_refused_before_anything_loads(monkeypatch, args, world, message):
    from hydra import compose, initialize_config_module

    from advsuite.errors import ConfigError
    from advsuite.tasks.options import check_launch

    monkeypatch.setenv("WORLD_SIZE", world)
    with initialize_config_module(config_module="advsuite.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(args))
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_launch(cfg)

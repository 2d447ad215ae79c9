"""DAT against its single-process reference: a correct run is equivalent, every injected bug is caught."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from advsuite.artifacts import state_hash
from advsuite.data.bundle import DataBundle
from advsuite.distributed.bugs import BUGS
from advsuite.distributed.dat import DatStepper, train_dat
from advsuite.distributed.recipe import DatRecipe
from advsuite.distributed.tracing import iter_spawned, trace_verdict
from advsuite.errors import ConfigError
from advsuite.models import Classifier
from advsuite.training import Recipe


class TinyBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                                 nn.Linear(4 * 5 * 5, 10))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def recipe(**kw) -> DatRecipe:
    base = {"trainer": "dat", "epochs": 1, "batch_size": 16, "workers": 2, "adversarial": "pgd", "adv_eps": 0.1,
            "adv_steps": 2, "augment": "none", "lr": 0.01, "optimizer": "lalr"}  # fmt: skip
    out = Recipe.coerce({**base, **kw})
    assert isinstance(out, DatRecipe)
    return out


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(64, 1, 12, 12, generator=gen), torch.randint(0, 10, (64,), generator=gen)


FSDP = {"parallel": "fsdp"}
HYBRID = {"parallel": "hybrid", "shard_group": 2, "workers": 4}  # 4 processes: 2 shard groups of 2


def _sharded_only(bug: str) -> bool:
    return "sharded" in BUGS[bug].needs.split("+")


def _compressed_only(bug: str) -> bool:
    return "compressed" in BUGS[bug].needs.split("+")


#: (bug, recipe changes it needs): every bug, DDP's under DDP, FSDP's under full sharding (and two of DDP's too),
#: the compressor's under both gathering compressors
SCENARIOS = [
    ("none", {}),
    ("none", {"workers": 4}),  # two workers per process: the gradients are summed in another order
    ("none", {"precision": "bf16"}),
    ("none", FSDP),
    ("none", {**FSDP, "workers": 4}),
    ("none", {**FSDP, "precision": "bf16"}),
    ("none", {"compression": "quantize"}),  # the reference replays the compressors' draws
    ("none", {"compression": "natural", "workers": 4}),
    ("compressor_biased", {"compression": "quantize"}),
    ("compressor_biased", {"compression": "natural"}),
    *[(name, {"workers": 4} if name == "accum_unscaled" else {}) for name in BUGS if name != "none"
      and not _sharded_only(name) and not _compressed_only(name)],
    *[(name, FSDP) for name in BUGS if _sharded_only(name) or name in ("no_init_broadcast", "bn_unsynced")],
]  # fmt: skip
HYBRID_SCENARIOS = [("none", HYBRID), ("fsdp_shard_order", HYBRID), ("lalr_local_norm", HYBRID)]


def _traced(data, scenarios, world: int):
    torch.manual_seed(0)
    model = TinyBN()
    recipes = [recipe(bug=bug, **kw) for bug, kw in scenarios]
    return model, recipes, list(iter_spawned(model, recipes, *data, seed=0, steps=2, world=world))


@pytest.fixture(scope="module")
def traced(data):
    return _traced(data, SCENARIOS, 2)


@pytest.fixture(scope="module")
def traced_hybrid(data):
    return _traced(data, HYBRID_SCENARIOS, 4)


def _check(traced, data, scenarios, index: int) -> None:
    model, recipes, runs = traced
    bug = scenarios[index][0]
    traces, init = runs[index]
    verdict = trace_verdict(model, init, recipes[index], *data, 0, 2, traces)
    if bug == "none":
        assert verdict.equivalent, verdict.summary()
    else:
        first = verdict.first_divergent
        assert first is not None, f"{bug} went undetected: {verdict.summary()}"
        path, kind = BUGS[bug].site
        assert (f":{kind}" in first.key and path in first.key) or kind == "", (bug, verdict.summary())


def _ids(scenarios) -> list[str]:
    return [f"{b}-{'-'.join(map(str, k.values()))}" for b, k in scenarios]


@pytest.mark.parametrize("index", range(len(SCENARIOS)), ids=_ids(SCENARIOS))
def test_two_processes_against_the_reference(traced, data, index: int):
    _check(traced, data, SCENARIOS, index)


@pytest.mark.parametrize("index", range(len(HYBRID_SCENARIOS)), ids=_ids(HYBRID_SCENARIOS))
def test_hybrid_sharding_on_four_processes_against_the_reference(traced_hybrid, data, index: int):
    _check(traced_hybrid, data, HYBRID_SCENARIOS, index)


def test_every_bug_is_traced():
    assert {bug for bug, _ in SCENARIOS} == set(BUGS)


@pytest.mark.parametrize(
    ("kw", "world", "message"),
    [
        ({"bug": "fsdp_shard_order"}, 2, "needs sharded weights"),
        ({"bug": "grad_sum", **FSDP}, 2, "needs train.parallel=ddp"),
        ({"bug": "lalr_local_norm", **FSDP, "optimizer": "sgd"}, 2, "needs train.optimizer=lalr"),
        ({"bug": "fsdp_shard_order", "parallel": "hybrid", "shard_group": 1}, 2, "needs sharded weights"),
        ({"parallel": "hybrid", "shard_group": 3, "workers": 4}, 4, "cannot be cut into shard groups of"),
    ],
)
def test_a_bug_or_layout_that_cannot_act_is_refused(kw, world: int, message: str):
    from advsuite.distributed.bugs import check_bug

    with pytest.raises(ConfigError, match=message):
        check_bug(recipe(**kw), world, has_bn=True)


def test_compression_under_fsdp_is_refused():
    with pytest.raises(ConfigError, match="compression=quantize is a DDP communication hook; FSDP has none"):
        recipe(compression="quantize", **FSDP)


def test_an_unknown_bug_lists_the_choices():
    with pytest.raises(ConfigError, match="bug must be one of none, grad_sum"):
        recipe(bug="nope")


def test_a_batch_the_workers_cannot_share_is_refused():
    with pytest.raises(ConfigError, match="not divisible by workers=3"):
        recipe(workers=3)


# ------------------------------------------------------------------------------ one process, no torchrun


def _bundle(data) -> DataBundle:
    ds = TensorDataset(*data)
    return DataBundle("toy", ds, ds, 10, (1, 12, 12))


def _train(data, tmp_path: Path | None, **kw) -> tuple[Classifier, dict]:
    torch.manual_seed(0)
    model = Classifier(TinyBN(), num_classes=10, input_shape=(1, 12, 12), name="tiny")
    info = train_dat(model, _bundle(data), recipe(epochs=2, checkpoint_every=3, **kw), seed=0, verbose=False,
                     checkpoint_dir=tmp_path)  # fmt: skip
    return model, info


def test_a_killed_run_resumes_from_its_checkpoint_to_the_same_weights(data, tmp_path: Path, monkeypatch):
    uninterrupted, info = _train(data, None)
    assert info["steps"] == 8 and info["resumed_from"] is None

    calls = {"n": 0}
    original = DatStepper.step

    def dies_at_step_5(self, step, batch):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt  # the process is stopped during its 6th step
        return original(self, step, batch)

    monkeypatch.setattr(DatStepper, "step", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        _train(data, tmp_path)
    assert sorted(p.name for p in tmp_path.glob("step-*.pt")) == ["step-000003.pt"]  # checkpoints: after 3 steps
    monkeypatch.setattr(DatStepper, "step", original)
    resumed, info = _train(data, tmp_path)
    assert info["resumed_from"] == 3
    assert state_hash(resumed.state_dict()) == state_hash(uninterrupted.state_dict())


def test_a_corrupt_checkpoint_is_skipped_and_a_changed_recipe_starts_over(data, tmp_path: Path, monkeypatch):
    from advsuite.distributed import checkpoint

    state = {"step": 3, "model": {}}
    checkpoint.save(tmp_path, 3, state, "digest-a")
    checkpoint.save(tmp_path, 6, state, "digest-a")
    (tmp_path / "step-000006.pt").write_bytes(b"half a file")
    with pytest.warns(UserWarning, match="step-000006.pt: its sha256 does not match"):
        assert checkpoint.latest(tmp_path, "digest-a").step == 3  # type: ignore[union-attr]
    assert checkpoint.latest(tmp_path, "digest-b") is None  # another recipe's checkpoints are not resumed


def test_deterministic_mode_reruns_bitwise(data):
    from advsuite.seeding import configure_determinism

    was, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    try:
        assert configure_determinism()["deterministic_algorithms"] is True
        first, _ = _train(data, None)
        second, _ = _train(data, None)
    finally:
        torch.use_deterministic_algorithms(was)
        torch.set_num_threads(threads)
    assert state_hash(first.state_dict()) == state_hash(second.state_dict())


def _rank_dies_at_step_4(rank: int, port: int, folder: str, data) -> None:
    import os

    import torch.distributed as dist

    from advsuite.distributed.dat import WorkerLostError

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    original = DatStepper.step

    def step(self, index, batch):
        if rank == 1 and index == 4:
            os._exit(9)  # killed mid-run
        return original(self, index, batch)

    DatStepper.step = step  # type: ignore[method-assign]
    torch.manual_seed(0)
    model = Classifier(TinyBN(), num_classes=10, input_shape=(1, 12, 12), name="tiny")
    try:
        train_dat(
            model, _bundle(data), recipe(epochs=2, checkpoint_every=3), verbose=False, checkpoint_dir=Path(folder)
        )
    except WorkerLostError as exc:
        (Path(folder) / "rank0-error.txt").write_text(str(exc))


def test_a_process_that_dies_stops_the_others_with_a_clear_error_and_a_valid_checkpoint(data, tmp_path: Path):
    import torch.multiprocessing as mp

    from advsuite.distributed import checkpoint
    from advsuite.distributed.tracing import _free_port

    # join each process ourselves: mp.spawn's own join would kill rank 0 as soon as rank 1 died
    context = mp.spawn(_rank_dies_at_step_4, args=(_free_port(), str(tmp_path), data), nprocs=2, join=False)
    for process in context.processes:
        process.join(120)
    assert [p.exitcode for p in context.processes] == [0, 9]
    message = (tmp_path / "rank0-error.txt").read_text()
    assert "another DAT process stopped during step 4, so rank 0 of 2 stops too" in message
    assert "step-000003.pt; run the same command again to resume" in message
    recipe_digest = recipe(epochs=2, checkpoint_every=3).digest({"seed": 0, "n_train": 64})
    assert checkpoint.latest(tmp_path, recipe_digest).step == 3  # type: ignore[union-attr]


def _train_two(rank: int, port: int, folder: str, data, kw: dict, stop_at: int | None) -> None:
    """One of two gloo processes training TinyBN; rank 0 saves the weights (or both are killed at ``stop_at``)."""
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    if stop_at is not None:
        original = DatStepper.step

        def step(self, index, batch):
            if index == stop_at:  # the job is killed here: both processes end at once, without any clean-up
                dist.barrier()
                os._exit(0)
            return original(self, index, batch)

        DatStepper.step = step  # type: ignore[method-assign]
    torch.manual_seed(0)
    model = Classifier(TinyBN(), num_classes=10, input_shape=(1, 12, 12), name="tiny")
    try:
        info = train_dat(model, _bundle(data), recipe(epochs=2, checkpoint_every=3, **kw), verbose=False,
                         checkpoint_dir=Path(folder) / "checkpoints")  # fmt: skip
    finally:
        dist.destroy_process_group()
    if rank == 0:
        torch.save((model.state_dict(), info), Path(folder) / "trained.pt")


def _two_processes(folder: Path, data, kw: dict, stop_at: int | None = None) -> tuple[dict, dict] | None:
    import torch.multiprocessing as mp

    from advsuite.distributed.tracing import _free_port

    mp.spawn(_train_two, args=(_free_port(), str(folder), data, kw, stop_at), nprocs=2, join=True)
    saved = folder / "trained.pt"
    return torch.load(saved, weights_only=False) if saved.exists() else None


def test_fsdp_training_resumes_bitwise_and_matches_ddp(data, tmp_path: Path):
    """Two processes, full sharding: a stopped run resumes from its (gathered, full) checkpoint to the
    uninterrupted run's weights, a plain module comes back, and DDP reaches the same weights up to round-off."""
    whole = _two_processes(tmp_path / "whole", data, FSDP)
    assert whole is not None
    state, info = whole
    assert info["world_size"] == 2 and info["steps"] == 8
    assert not any(type(t).__name__ == "DTensor" for t in state.values())
    assert _two_processes(tmp_path / "resumed", data, FSDP, stop_at=5) is None
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").glob("step-*.pt")) == ["step-000003.pt"]
    resumed = _two_processes(tmp_path / "resumed", data, FSDP)
    assert resumed is not None and resumed[1]["resumed_from"] == 3
    assert state_hash(resumed[0]) == state_hash(state)
    ddp = _two_processes(tmp_path / "ddp", data, {})
    assert ddp is not None
    for name, tensor in state.items():
        # the conv bias before BatchNorm has a zero gradient up to round-off, which LALR's normalised update
        # amplifies into any value (the tracer's noise floor excuses it the same way); the running mean after it
        # carries that bias, and nothing else downstream does (BatchNorm subtracts the batch mean)
        if tensor.is_floating_point() and name not in ("net.net.0.bias", "net.net.1.running_mean"):
            torch.testing.assert_close(tensor, ddp[0][name], rtol=1e-3, atol=1e-4, msg=name)

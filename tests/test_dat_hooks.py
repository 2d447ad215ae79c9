"""The gradient-compression DDP hooks in a real 2-process gloo group: every rank ends with the same gradient,
it is the ranks' mean (exactly for fp32, within the compressor's error otherwise), and the bytes are counted."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from advsuite.distributed.hooks import COMPRESSIONS, make_hook
from advsuite.errors import ConfigError

WORLD = 2


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.ReLU(), nn.Linear(16, 3))


def batch(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + rank)
    return torch.randn(8, 1, 6, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen)


def worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    results = {}
    for compression in COMPRESSIONS:
        ddp = nn.parallel.DistributedDataParallel(tiny())
        state, hook = make_hook(compression, bits=7, seed=3)
        ddp.register_comm_hook(state, hook)
        state.step = 5
        x, y = batch(rank)
        nn.functional.cross_entropy(ddp(x), y).backward()
        results[compression] = ([p.grad.clone() for p in ddp.parameters()], dict(state.bytes_sent))
    torch.save(results, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("hooks")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(port, str(out)), nprocs=WORLD)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def reference() -> list[torch.Tensor]:
    """The mean over ranks of each rank's own gradient, on one process."""
    grads = []
    for rank in range(WORLD):
        model = tiny()
        x, y = batch(rank)
        nn.functional.cross_entropy(model(x), y).backward()
        grads.append([p.grad for p in model.parameters()])
    return [sum(g) / WORLD for g in zip(*grads, strict=True)]


@pytest.mark.parametrize(("compression", "tolerance", "bytes_per_element"),
                         [("none", 1e-6, 4), ("fp16", 2e-3, 2), ("bf16", 1e-2, 2), ("quantize", 0.15, 1),
                          ("natural", 0.45, 2)])  # fmt: skip
def test_each_hook_gives_every_rank_the_mean_gradient(
    ranks: list[dict], compression: str, tolerance: float, bytes_per_element: int
) -> None:
    (g0, sent0), (g1, sent1) = ranks[0][compression], ranks[1][compression]
    assert all(torch.equal(a, b) for a, b in zip(g0, g1, strict=True))  # replicas stay identical
    exact = reference()
    error = torch.cat([(a - b).flatten() for a, b in zip(g0, exact, strict=True)]).norm()
    relative = float(error / torch.cat([e.flatten() for e in exact]).norm())
    assert relative < tolerance, (compression, relative)
    if compression in ("quantize", "natural"):
        assert relative > 1e-4  # the compression really happened
    numel = sum(e.numel() for e in exact)
    norms = 4 * len(exact) if compression == "quantize" else 0  # the fp32 norm beside each tensor's codes
    assert sent0 == sent1 == {5: numel * bytes_per_element + norms}


def test_an_unknown_compression_lists_the_choices() -> None:
    with pytest.raises(ConfigError, match="unknown gradient compression 'zip'; choose from none, fp16, bf16"):
        make_hook("zip")
    with pytest.raises(ConfigError, match="bits must be a whole number"):
        make_hook("quantize", bits=9)

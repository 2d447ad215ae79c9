"""Seeding: every random component takes a seed or a ``torch.Generator``."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) for a reproducible run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device`` seeded with ``seed``."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def derive_seed(seed: int, *labels: str | int) -> int:
    """A 63-bit seed for a named stream (``derive_seed(seed, "attack", rank, step)``): stable across processes
    and machines (unlike ``hash()``, which Python salts per process), distinct for distinct labels."""
    text = "/".join(str(v) for v in (seed, *labels)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF


def configure_determinism(threads: int | None = None) -> dict[str, object]:
    """Deterministic mode for this process: torch's deterministic algorithms (an error where an op has none),
    cuDNN without autotuning, the cuBLAS workspace setting they need, and a fixed thread count (the current one
    unless ``threads``). Seeds and data order are already derived from the run's seed everywhere. Returns what
    was set, for the record."""
    import os

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when CUDA initialises
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.set_num_threads(threads or torch.get_num_threads())
    return {"deterministic_algorithms": True, "threads": torch.get_num_threads(),
            "cublas_workspace": os.environ["CUBLAS_WORKSPACE_CONFIG"]}  # fmt: skip

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

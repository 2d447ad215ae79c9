"""DAT checkpoints: written by rank 0 atomically, resumed by every rank.

Each checkpoint is ``step-<NNNNNN>.pt`` (weights with buffers, optimizer and schedule state, the step) and a
marker ``step-<NNNNNN>.json`` written after it with the file's sha256 and the recipe's digest. A checkpoint
counts only when its marker exists and the hash matches, so a run killed mid-write leaves the previous one in
force. Every random stream of a DAT step is derived from (seed, step, worker), so no RNG state is saved, and
a resumed run reaches the weights an uninterrupted run reaches (bitwise on CPU; tested).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from advsuite.artifacts import atomic_write

#: checkpoints kept (the newest); older ones are removed after a new one is complete
KEEP = 2


@dataclass
class Saved:
    step: int
    state: dict[str, Any]
    path: Path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save(folder: Path, step: int, state: dict[str, Any], digest: str) -> Path:
    """Write ``state`` as the checkpoint after ``step`` steps (call on rank 0 only), then prune old ones."""
    path = folder / f"step-{step:06d}.pt"
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    marker = {"step": step, "sha256": _sha256(path), "recipe": digest}
    atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(marker)))
    mine = [m for m in sorted(folder.glob("step-*.json")) if _digest_of(m) == digest]
    for old in mine[:-KEEP]:
        old.unlink(missing_ok=True)
        old.with_suffix(".pt").unlink(missing_ok=True)
    return path


def _digest_of(marker: Path) -> str | None:
    try:
        return json.loads(marker.read_text()).get("recipe")
    except (OSError, ValueError):
        return None


def latest(folder: Path | None, digest: str) -> Saved | None:
    """The newest complete checkpoint of this recipe in ``folder``; a corrupt one is skipped with a warning."""
    if folder is None or not folder.is_dir():
        return None
    for marker in sorted(folder.glob("step-*.json"), reverse=True):
        try:
            meta = json.loads(marker.read_text())
            path = marker.with_suffix(".pt")
            if meta.get("recipe") != digest:
                continue
            if _sha256(path) != meta["sha256"]:
                raise ValueError("its sha256 does not match the marker")
            return Saved(int(meta["step"]), torch.load(path, map_location="cpu", weights_only=False), path)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            warnings.warn(f"skipping DAT checkpoint {marker.with_suffix('.pt')}: {exc}", stacklevel=2)
    return None

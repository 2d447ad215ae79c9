"""The one content-addressed cache for everything advsuite trains or fits.

Zoo models, probe priors and patch generators today; defended or backdoored models and fitted detectors
tomorrow. An entry is a folder named by a hash of everything that determines its content::

    <cache root>/<section>/<dataset>/<name>-<key>/<weights file>   # a safetensors state dict
    <cache root>/<section>/<dataset>/<name>-<key>/meta.json        # written last: the commit marker

The zoo's section is the root itself (its entries predate the others). Writes are atomic and the weights
go first, so a killed run never leaves an entry that looks complete. ``meta.json`` records the
:func:`state_hash` of the weights; a load re-hashes what it read, and an entry that is incomplete, does
not parse or does not match is discarded with a warning (the caller then rebuilds it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from advsuite.errors import CheckpointError, ConfigError
from advsuite.paths import advsuite_home

log = logging.getLogger(__name__)

#: part of every key: bump when the layout or the key derivation changes, so old entries are not misread
CACHE_VERSION = 1
META_FILE = "meta.json"

T = TypeVar("T")


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``cache_dir``, else ``$ADVSUITE_HOME/zoo``."""
    return Path(cache_dir).expanduser() if cache_dir else advsuite_home() / "zoo"


def content_key(blob: Mapping[str, Any]) -> str:
    """The 12-hex-digit key of an entry: sha256 of ``blob`` (plus :data:`CACHE_VERSION`) as sorted JSON."""
    text = json.dumps({**blob, "cache_version": CACHE_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def state_hash(state: Mapping[str, torch.Tensor], length: int = 16) -> str:
    """sha256 over a state dict's names, dtypes, shapes and bytes (in name order)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:length]


def atomic_write(path: Path, write: Callable[[str], Any]) -> None:
    """Call ``write(tmp_path)`` then rename into ``path``, so a killed process never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def detached(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A CPU, contiguous, owned copy of a state dict, as safetensors writes it."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


@dataclass(frozen=True)
class Entry:
    """One cache entry: ``path`` holds ``weights_file`` and ``meta.json``; ``what`` names it in messages."""

    path: Path
    weights_file: str
    what: str

    @classmethod
    def at(cls, cache_dir: str | os.PathLike[str] | None, section: str, dataset: str, name: str, **kw: str) -> Entry:
        """The entry ``<cache root>/<section>/<dataset>/<name>`` (``section=""``: the root itself)."""
        root = cache_root(cache_dir)
        return cls(path=(root / section if section else root) / dataset / name, **kw)

    @property
    def weights(self) -> Path:
        return self.path / self.weights_file

    @property
    def meta(self) -> Path:
        return self.path / META_FILE

    def complete(self) -> bool:
        return self.meta.is_file()

    def read(self, build: Callable[[dict[str, Any], dict[str, torch.Tensor]], T]) -> T:
        """``build(meta, state)`` from a complete entry whose weights match their recorded hash.

        :class:`CheckpointError` when the entry is incomplete or corrupt (or ``build`` fails on it);
        :class:`ConfigError` from ``build`` passes through (a setting, not the entry, is wrong).
        """
        from safetensors.torch import load_file

        if not self.complete():
            raise CheckpointError(f"{self.path} is not a complete {self.what} cache entry (no {META_FILE})")
        try:
            meta = json.loads(self.meta.read_text())
            state = load_file(str(self.weights), device="cpu")
        except Exception as exc:
            raise self._corrupt(exc) from exc
        if not isinstance(meta, dict) or meta.get("weights_hash") != state_hash(state):
            raise CheckpointError(f"weights in {self.weights} do not match the hash recorded in {self.meta}")
        try:
            return build(meta, state)
        except (ConfigError, CheckpointError):
            raise
        except Exception as exc:
            raise self._corrupt(exc) from exc

    def _corrupt(self, exc: Exception) -> CheckpointError:
        return CheckpointError(f"{self.what} cache entry {self.path} is corrupt ({type(exc).__name__}: {exc})")

    def load(self, build: Callable[[dict[str, Any], dict[str, torch.Tensor]], T]) -> T | None:
        """:meth:`read`, or None on a miss; an unusable entry is discarded with a warning (rebuild it)."""
        if not self.path.exists():
            return None
        try:
            return self.read(build)
        except CheckpointError as exc:
            warnings.warn(f"{self.what} cache entry {self.path} is unusable ({exc}); rebuilding it", stacklevel=3)
            log.warning("unusable %s cache entry %s: %s", self.what, self.path, exc)
            shutil.rmtree(self.path, ignore_errors=True)
            return None

    def store(
        self, state: Mapping[str, torch.Tensor], meta: Mapping[str, Any], header: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """Write the weights, then ``meta`` plus their ``weights_hash`` (the commit marker); the written meta."""
        from safetensors.torch import save_file

        tensors = detached(state)
        meta = {**meta, "weights_hash": state_hash(tensors), "cache_version": CACHE_VERSION}
        self.path.mkdir(parents=True, exist_ok=True)
        self.meta.unlink(missing_ok=True)  # a rebuild: the entry is incomplete until meta.json is back
        atomic_write(self.weights, lambda tmp: save_file(tensors, tmp, metadata=dict(header or {}) or None))
        text = json.dumps(meta, indent=2, sort_keys=True, default=str)
        atomic_write(self.meta, lambda tmp: Path(tmp).write_text(text))
        return meta

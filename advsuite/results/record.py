"""The run record: one JSON file per run, written atomically; the source of truth for results.

The evaluate pipeline builds the record (schema in ``docs/results.md``); this module only writes,
reads and fingerprints it. Nothing here imports torch, so the leaderboard stays cheap to run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

RECORD_NAME = "record.json"
SCHEMA_VERSION = 1

#: config keys that never change the numbers a run produces, so two runs differing only here are
#: "the same configuration". Dotted names reach into groups (``task.grid_images`` only changes the
#: picture, not the metrics).
IGNORED_CONFIG_KEYS: tuple[str, ...] = ("hydra", "paths", "redo", "verbose", "task.grid_images")
#: config groups added after runs were recorded: left out of the hash when their ``name`` is ``none``
OPTIONAL_COMPONENTS: tuple[str, ...] = ("detector",)
#: top-level keys added after runs were recorded: left out of the hash when null
OPTIONAL_KEYS: tuple[str, ...] = ("backdoor",)

#: packages whose versions can change results; recorded with every run
VERSIONED_PACKAGES: tuple[str, ...] = ("advsuite", "torch", "torchvision", "foolbox", "timm")


def to_jsonable(obj: Any) -> Any:
    """A copy of ``obj`` made of JSON types only; NaN and ±inf become ``None`` (JSON has neither).

    Tensors and NumPy values go through ``tolist()``, paths become strings, mappings (including
    OmegaConf containers) become dicts with string keys.
    """
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if hasattr(obj, "tolist"):  # torch.Tensor, numpy arrays and scalars
        return to_jsonable(obj.tolist())
    if isinstance(obj, (Sequence, set, frozenset)) and not isinstance(obj, (bytes, bytearray)):
        return [to_jsonable(v) for v in obj]
    raise TypeError(f"cannot store a {type(obj).__name__} in a record; convert it to a JSON type first")


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never a torn one.

    The temporary file lives in the same directory (``os.replace`` is only atomic within one
    filesystem) and is fsynced before the rename, so a crash cannot leave an empty file behind.
    """
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """:func:`atomic_write_text` for binary files (e.g. the traces artifact)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform/filesystem, hence best effort.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_record(run_dir: str | os.PathLike[str], record: Mapping[str, Any]) -> Path:
    """Write ``record`` to ``run_dir/record.json`` atomically and return that path.

    The record is converted first (:func:`to_jsonable`), so a value JSON cannot hold fails before
    anything on disk is touched.
    """
    path = Path(run_dir) / RECORD_NAME
    data = to_jsonable(record)
    text = json.dumps(data, indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    return atomic_write_text(path, text)


def read_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a record from a ``record.json`` file or from the run directory holding one."""
    path = Path(path)
    if path.is_dir():
        path = path / RECORD_NAME
    with path.open(encoding="utf-8") as fh:
        record = json.load(fh)
    if not isinstance(record, dict):
        raise ValueError(f"{path} does not hold a record (a JSON object); it holds a {type(record).__name__}")
    return upgrade_record(record)


#: record ``names`` fields that were renamed: old name -> the name records use now
RENAMED_NAMES = {"threat_model": "norm"}


def upgrade_record(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` in today's words: a ``names`` field under an old name (:data:`RENAMED_NAMES`) moves to its
    new one, so records written by earlier versions read like new ones. Changes and returns ``record``."""
    names = record.get("names")
    if isinstance(names, dict):
        for old, new in RENAMED_NAMES.items():
            if old in names and new not in names:
                names[new] = names.pop(old)
    return record


def record_problem(record: Any) -> str | None:
    """Why ``record`` cannot be trusted as a run record (``None`` when it can).

    A record is whole when it is a JSON object with a ``run_id`` and a ``status``; a ``finished`` one
    also needs its ``names`` and ``metrics`` (a file cut short or edited by hand may lack them).
    """
    if not isinstance(record, dict):
        return f"it holds a {type(record).__name__}, not a JSON object"
    for key in ("run_id", "status"):
        if not isinstance(record.get(key), str) or not record[key]:
            return f"its {key!r} is missing"
    if record["status"] == "finished":
        for key in ("names", "metrics"):
            if not isinstance(record.get(key), dict):
                return f"it says finished but its {key!r} is missing"
    return None


def read_checked_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """:func:`read_record`, then :func:`record_problem`; raises ``ValueError`` naming the file and the fault."""
    try:
        record = read_record(path)
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"run record {path} is unreadable ({err})") from err
    problem = record_problem(record)
    if problem:
        raise ValueError(f"run record {path} is incomplete: {problem}")
    return record


def config_hash(config: Mapping[str, Any], ignore: Iterable[str] = IGNORED_CONFIG_KEYS) -> str:
    """SHA-256 of the canonical JSON of ``config`` without the keys in ``ignore``.

    Canonical means sorted keys and no whitespace, so key order does not matter. ``ignore`` holds
    top-level keys or dotted paths (``"task.grid_images"``); missing ones are fine.
    """
    ignored = list(ignore)
    top = {name for name in ignored if "." not in name}
    # an optional component left out hashes like a config from before it existed, so those runs still count
    top |= {name for name in OPTIONAL_COMPONENTS if _name_of(config.get(name)) == "none"}
    top |= {name for name in OPTIONAL_KEYS if config.get(name) is None}
    # Drop top-level keys before converting: they may hold interpolations that do not resolve here.
    data = to_jsonable({str(k): v for k, v in config.items() if str(k) not in top})
    for name in ignored:
        if "." in name:
            _drop_path(data, name.split("."))
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _name_of(section: Any) -> Any:
    return section.get("name") if isinstance(section, Mapping) else None


def _drop_path(data: Any, parts: list[str]) -> None:
    for part in parts[:-1]:
        if not isinstance(data, dict) or part not in data:
            return
        data = data[part]
    if isinstance(data, dict):
        data.pop(parts[-1], None)


def package_versions(packages: Iterable[str] = VERSIONED_PACKAGES) -> dict[str, str | None]:
    """Installed versions of ``packages`` (``None`` when missing) plus the Python version."""
    versions: dict[str, str | None] = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["python"] = platform.python_version()
    return versions


def git_commit(path: str | os.PathLike[str] | None = None) -> str | None:
    """The commit checked out where advsuite's source lives (or at ``path``), else ``None``.

    Never raises: no git, no repository (an installed wheel) or a slow filesystem all give ``None``.
    """
    cwd = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else None


def finite_number(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing, bool, non-numeric, NaN or inf)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None

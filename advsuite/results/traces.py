"""The traces artifact: every attacked sample's distance-vs-queries trace, in one safetensors file.

A query attack returns one (T, 2) trace per sample: (queries so far, L2 distance of the best
adversarial so far). The run stores them all in ``<run_dir>/traces.safetensors``, named in the
record's ``artifacts.traces``, so that curves and budget metrics can be recomputed later and the
leaderboard can draw all methods of a sweep on one figure. Layout (every trace concatenated):

- ``values``: float64 (sum of T, 2), the rows of every trace one after the other;
- ``offsets``: int64 (m + 1,), trace ``i`` is ``values[offsets[i]:offsets[i + 1]]``;
- ``index``: int64 (m,), the sample each trace belongs to (its position in ``per_sample`` lists);
- metadata: ``format`` (``advsuite-traces``), ``version``, ``columns`` (``queries,l2``) and
  ``n_dims`` (C·H·W of one image, to turn L2 into per-pixel MSE: ``l2**2 / n_dims``).

Not imported by :mod:`advsuite.results` itself (it needs torch; the index and records do not).
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as save_safetensors

from advsuite.errors import InputError
from advsuite.results.record import RECORD_NAME, atomic_write_bytes, read_record

TRACES_NAME = "traces.safetensors"
FORMAT = "advsuite-traces"
VERSION = "1"


@dataclass
class TraceArtifact:
    """What a traces file holds: ``traces[k]`` belongs to sample ``index[k]``."""

    traces: list[torch.Tensor]
    index: list[int]
    n_dims: int | None


def write_traces(
    path: str | os.PathLike[str],
    traces: Sequence[torch.Tensor],
    index: Sequence[int],
    n_dims: int | None = None,
) -> Path:
    """Write ``traces`` (each (T, 2), possibly empty) of samples ``index`` to ``path`` atomically."""
    if len(traces) != len(index):
        raise InputError(f"got {len(traces)} traces for {len(index)} sample indices; give one index per trace")
    rows = []
    for k, trace in enumerate(traces):
        if trace.ndim != 2 or trace.shape[1] != 2:
            raise InputError(f"trace {k} has shape {tuple(trace.shape)}; a trace is (T, 2) of (queries, distance)")
        rows.append(trace.detach().to("cpu", torch.float64))
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.int64)
    offsets = torch.zeros(len(rows) + 1, dtype=torch.int64)
    offsets[1:] = lengths.cumsum(0)
    values = torch.cat(rows) if rows else torch.zeros(0, 2, dtype=torch.float64)
    metadata = {"format": FORMAT, "version": VERSION, "columns": "queries,l2"}
    if n_dims is not None:
        metadata["n_dims"] = str(int(n_dims))
    data = save_safetensors(
        {"values": values.contiguous(), "offsets": offsets, "index": torch.tensor(list(index), dtype=torch.int64)},
        metadata=metadata,
    )
    return atomic_write_bytes(path, canonical_safetensors(data))


def canonical_safetensors(data: bytes) -> bytes:
    """``data`` with its JSON header's keys sorted, so equal tensors and metadata give equal bytes.

    safetensors keeps the metadata in a hash map, whose order differs from run to run. The format is an
    8-byte little-endian header length, the header (JSON, space-padded to a multiple of 8 bytes) and the
    tensor bytes; tensor offsets count from the end of the header, so re-serialising it is safe.
    """
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + size :]


def read_traces(path: str | os.PathLike[str]) -> TraceArtifact:
    """Read a traces file written by :func:`write_traces`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no traces file at {path}; was the run directory moved or cleaned?")
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118 - not a dict
    except Exception as err:  # safetensors raises its own error types
        raise InputError(f"{path} is not a readable traces file ({err}); re-run the attack to write it") from err
    if metadata.get("format") != FORMAT or not {"values", "offsets", "index"} <= tensors.keys():
        raise InputError(f"{path} is not an advsuite traces file (format {metadata.get('format')!r})")
    values, offsets = tensors["values"], tensors["offsets"].tolist()
    traces = [values[a:b].clone() for a, b in itertools.pairwise(offsets)]
    n_dims = metadata.get("n_dims")
    return TraceArtifact(traces=traces, index=tensors["index"].tolist(), n_dims=int(n_dims) if n_dims else None)


def traces_path(run_dir_or_record: str | os.PathLike[str] | Mapping[str, Any]) -> Path:
    """Where a run's traces file is: from a record (dict), a run directory, a record.json or the file."""
    if isinstance(run_dir_or_record, Mapping):
        record = run_dir_or_record
    else:
        path = Path(run_dir_or_record)
        if path.is_file() and path.name != RECORD_NAME:
            return path  # the traces file itself
        record = read_record(path)
        record = {**record, "run_dir": str(path if path.is_dir() else path.parent)}
    name = (record.get("artifacts") or {}).get("traces")
    run_dir = record.get("run_dir")
    if not name or not run_dir:
        raise InputError(
            f"run {record.get('run_id')} has no traces artifact (only query attacks record traces, and runs "
            "before advsuite stored them have none)"
        )
    return Path(run_dir) / str(name)


def load_traces(run_dir_or_record: str | os.PathLike[str] | Mapping[str, Any]) -> list[torch.Tensor]:
    """The traces of a run, one (T, 2) float64 tensor per attacked sample, in sample order.

    Accepts a record (dict), a run directory, its ``record.json`` or the traces file. Use
    :func:`read_traces` on :func:`traces_path` for the sample indices and ``n_dims`` too.
    """
    return read_traces(traces_path(run_dir_or_record)).traces

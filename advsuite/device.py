"""Device selection: ``auto`` uses a GPU when one is present; nothing assumes CUDA."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

from advsuite.errors import ConfigError


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """Turn ``auto``/``cpu``/``cuda``/``cuda:1``/``mps`` into a :class:`torch.device`."""
    if isinstance(spec, torch.device):
        return spec
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={spec!r} was asked for but no CUDA GPU is available; use device=auto")
    return device


def describe_machine() -> str:
    """CPU model, CPU count, GPU (if any), OS and architecture: what a benchmark record states."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} CPUs{gpu}, {platform.system()} {platform.machine()}"


def provenance() -> dict[str, Any]:
    """Where and how a benchmark run was made: its command line, date, machine, torch version and threads."""
    import datetime
    import sys

    return {
        "command": " ".join(["python", *sys.argv]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": describe_machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }

"""Saving and loading weights: safetensors (preferred) or a torch ``state_dict`` loaded with ``weights_only``.

Checkpoints may come from the bare network or from a :class:`Classifier` (keys prefixed ``net.``), or
from a DDP-wrapped model (``module.``); the prefixes are stripped before matching. Every failure is a
:class:`CheckpointError` that names the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advsuite.artifacts import atomic_write, detached, state_hash
from advsuite.errors import CheckpointError

SAFETENSORS_SUFFIX = ".safetensors"
#: the safetensors metadata key holding our JSON metadata (safetensors metadata is str -> str)
METADATA_KEY = "advsuite"
_PREFIXES = ("module.", "net.")
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")
_LIST_LIMIT = 10


def _target(module: nn.Module) -> nn.Module:
    """The network whose weights a checkpoint holds: a Classifier's ``net``, else the module itself."""
    net = getattr(module, "net", None)
    return net if isinstance(net, nn.Module) else module


def network_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The network's weights as a detached CPU state dict (a Classifier's without the ``net.`` prefix)."""
    return detached(_target(module).state_dict())


def checkpoint_header(metadata: Mapping[str, Any] | None) -> dict[str, str]:
    """The safetensors header holding ``metadata`` as JSON (read back by :func:`read_metadata`)."""
    return {METADATA_KEY: json.dumps(dict(metadata or {}), sort_keys=True, default=str)}


def save_checkpoint(module: nn.Module, path: str | os.PathLike[str], metadata: Mapping[str, Any] | None = None) -> Path:
    """Save the network's weights atomically: ``.safetensors`` (metadata in its header) or a torch state_dict.

    A Classifier is saved without its ``net.`` prefix, so the file loads into the bare network as well.
    """
    path = Path(path)
    state = network_state(module)
    if path.suffix == SAFETENSORS_SUFFIX:
        from safetensors.torch import save_file

        atomic_write(path, lambda tmp: save_file(state, tmp, metadata=checkpoint_header(metadata)))
    else:
        atomic_write(path, lambda tmp: torch.save(state, tmp))
    return path


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON metadata stored in a safetensors header by :func:`save_checkpoint` (``{}`` if none)."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        return dict(json.loads(header.get(METADATA_KEY, "{}")))
    except FileNotFoundError as exc:
        raise CheckpointError(f"checkpoint not found: {path}") from exc
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt (cannot read its safetensors header: {exc})") from exc


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a CPU state dict, without executing any pickled code."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (check model.checkpoint)")
    try:
        if _is_safetensors(path):
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, garbage or a pickle that needs arbitrary code
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a weights file ({type(exc).__name__}: {str(exc)[:300]}); "
            "re-download or re-save it as .safetensors or a torch state_dict"
        ) from exc
    for key in _WRAPPER_KEYS:  # {"state_dict": {...}, "epoch": 3} as written by many training scripts
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict of tensors (got {type(state).__name__})")
    return dict(state)


def _is_safetensors(path: Path) -> bool:
    if path.suffix == SAFETENSORS_SUFFIX:
        return True
    with path.open("rb") as handle:  # safetensors: 8-byte header length, then a JSON header
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _strip_prefixes(state: Mapping[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Drop ``module.``/``net.`` prefixes that every key carries but the target does not expect."""
    out = dict(state)
    changed = True
    while changed and out:
        changed = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in out) and not any(k.startswith(prefix) for k in expected):
                out = {k[len(prefix) :]: v for k, v in out.items()}
                changed = True
    return out


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LIST_LIMIT])
    return shown + (f", ... ({len(keys) - _LIST_LIMIT} more)" if len(keys) > _LIST_LIMIT else "")


def load_weights(module: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load a checkpoint into ``module`` (a Classifier or a bare network), strictly.

    Raises :class:`CheckpointError` listing missing/unexpected keys or mismatched shapes.
    """
    return apply_state(module, load_state_dict(path), path)


def apply_state(module: nn.Module, state: Mapping[str, torch.Tensor], source: str | os.PathLike[str]) -> nn.Module:
    """Load ``state`` (read from ``source``) into ``module``'s network, strictly; see :func:`load_weights`."""
    target = _target(module)
    own = target.state_dict()
    state = _strip_prefixes(state, set(own))
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {source} does not fit the architecture: missing keys [{_listed(missing)}]; "
            f"unexpected keys [{_listed(unexpected)}]. Was it saved from another architecture or with other "
            "model.kwargs (stem, depth, ...)?"
        )
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if state[k].shape != v.shape]
    if shapes:
        raise CheckpointError(
            f"checkpoint {source} has tensors of other shapes (checkpoint vs model): [{_listed(shapes)}]; "
            "check the dataset (channels, classes) and model.kwargs (stem, width, patch size)"
        )
    target.load_state_dict(state, strict=True)
    return module


def weights_hash(module: nn.Module, length: int = 16) -> str:
    """Short sha256 over the network's state dict (:func:`advsuite.artifacts.state_hash`), for provenance.

    A Classifier hashes like its bare network, so the hash does not depend on the wrapper.
    """
    return state_hash(_target(module).state_dict(), length)

"""The artifact cache: keys, hashes, the store/read round trip and what happens to damaged entries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from advsuite.artifacts import META_FILE, Entry, content_key, state_hash
from advsuite.errors import CheckpointError
from advsuite.models.checkpoints import weights_hash


def _entry(tmp_path: Path) -> Entry:
    return Entry.at(tmp_path, "things", "mnist5k", "thing-abc", weights_file="thing.safetensors", what="thing")


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(3, 4, generator=gen), "b": torch.arange(4, dtype=torch.int64)}


def test_keys_are_pinned_so_existing_entries_keep_their_names() -> None:
    # entries written before the cache was shared were named by exactly this derivation
    assert content_key({"a": 1, "b": [1, 2]}) == content_key({"b": [1, 2], "a": 1}) == "eb61a9f5c73f"
    assert content_key({"a": 2}) != content_key({"a": 1})


def test_state_hash_is_the_weights_hash_of_a_network() -> None:
    net = nn.Linear(3, 2)
    assert state_hash(net.state_dict()) == weights_hash(net)
    other = nn.Linear(3, 2)
    assert state_hash(other.state_dict()) != state_hash(net.state_dict())
    assert len(state_hash(net.state_dict(), length=8)) == 8


def test_store_then_read_round_trip(tmp_path: Path) -> None:
    entry = _entry(tmp_path)
    assert entry.path == tmp_path / "things" / "mnist5k" / "thing-abc"
    assert entry.load(lambda meta, state: state) is None  # a miss, no warning
    meta = entry.store(_state(), {"kind": "thing"}, {"note": "header"})
    assert meta["weights_hash"] == state_hash(_state()) and meta["cache_version"] == 1
    assert json.loads(entry.meta.read_text()) == meta
    state = entry.read(lambda meta, state: state)
    assert all(torch.equal(state[k], v) for k, v in _state().items())


@pytest.mark.parametrize("damage", ["no_meta", "garbage_weights", "other_weights", "bad_build"])
def test_a_damaged_entry_is_refused_then_discarded_with_a_warning(tmp_path: Path, damage: str) -> None:
    entry = _entry(tmp_path)
    entry.store(_state(), {"kind": "thing"})

    def build(meta: dict[str, object], state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if damage == "bad_build":
            raise RuntimeError("size mismatch")
        return state

    if damage == "no_meta":
        (entry.path / META_FILE).unlink()
    elif damage == "garbage_weights":
        entry.weights.write_bytes(b"not safetensors")
    elif damage == "other_weights":
        other = Entry(tmp_path / "other", "thing.safetensors", "x")
        other.store(_state(1), {})
        entry.weights.write_bytes(other.weights.read_bytes())
    with pytest.raises(CheckpointError, match="thing"):
        entry.read(build)
    with pytest.warns(UserWarning, match="unusable"):
        assert entry.load(build) is None
    assert not entry.path.exists()


def test_a_rebuild_is_incomplete_until_its_metadata_is_back(tmp_path: Path) -> None:
    entry = _entry(tmp_path)
    entry.store(_state(), {"kind": "thing"})
    entry.meta.unlink()
    assert not entry.complete()
    entry.store(_state(1), {"kind": "thing"})
    assert entry.complete() and torch.equal(entry.read(lambda m, s: s)["w"], _state(1)["w"])

"""Weights files no larger than a repository may track: sharded on save, joined on load, an
incomplete set refused; and every shipped bundle file under 10 MB."""

from __future__ import annotations

import pytest
import torch
from conftest import REPO

from NeuroADLib.errors import ModelError
from NeuroADLib.models.weights import load_weights, save_weights


def state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {f"block{k}.weight": torch.randn(50, 40, generator=generator).half()
            for k in range(5)}  # 4000 bytes each


def test_a_small_state_is_one_file_and_a_large_one_shards(tmp_path):
    whole = save_weights(state(), tmp_path, "net")
    assert [p.name for p in whole] == ["net.safetensors"]
    (tmp_path / "shards").mkdir()
    shards = save_weights(state(), tmp_path / "shards", "net", max_bytes=9000)
    assert [p.name for p in shards] == [f"net-0000{k}-of-00003.safetensors" for k in (1, 2, 3)]
    for folder in (tmp_path, tmp_path / "shards"):
        loaded = load_weights(folder, "net")
        assert list(loaded) == list(state())
        assert all(torch.equal(loaded[name], tensor) for name, tensor in state().items())


def test_a_missing_shard_is_refused(tmp_path):
    shards = save_weights(state(), tmp_path, "net", max_bytes=9000)
    shards[1].unlink()
    with pytest.raises(ModelError, match="shards"):
        load_weights(tmp_path, "net")


def test_every_shipped_bundle_file_is_under_10_mb_and_all_together_under_60_mb():
    files = [p for p in (REPO / "NeuroADLib" / "models" / "bundled").rglob("*") if p.is_file()]
    assert files and max(p.stat().st_size for p in files) < 10 * 10**6
    assert sum(p.stat().st_size for p in files) < 60 * 10**6

"""Network weights as safetensors files no larger than a repository may track.

A state dict under `MAX_FILE_BYTES` is one file, `STEM.safetensors`; a larger one is split,
tensor by tensor in their order, into `STEM-00001-of-0000N.safetensors`, ... (the naming of
sharded Hugging Face checkpoints). Loading takes whichever the folder holds and refuses an
incomplete set of shards. The bundle manifest hashes every file either way.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import ModelError

MAX_FILE_BYTES = 9 * 10**6  # under the 10 MB a tracked file may have


def save_weights(state: dict[str, torch.Tensor], folder: str | Path, stem: str,
                 max_bytes: int = MAX_FILE_BYTES) -> list[Path]:
    """Write `state` into `folder` as one file or as shards of at most `max_bytes` of tensor
    data each (a single larger tensor gets a shard of its own); returns the files."""
    from safetensors.torch import save_file

    folder = Path(folder)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    if len(shards) == 1:
        paths = [folder / f"{stem}.safetensors"]
    else:
        paths = [folder / f"{stem}-{k:05d}-of-{len(shards):05d}.safetensors"
                 for k in range(1, len(shards) + 1)]
    for shard, path in zip(shards, paths, strict=True):
        save_file(shard, str(path))
    return paths


def load_weights(folder: str | Path, stem: str) -> dict[str, torch.Tensor]:
    """The state dict `save_weights` wrote into `folder` under `stem`."""
    from safetensors.torch import load_file

    folder = Path(folder)
    single = folder / f"{stem}.safetensors"
    if single.is_file():
        return load_file(str(single))
    pattern = re.compile(rf"{re.escape(stem)}-(\d{{5}})-of-(\d{{5}})\.safetensors")
    shards = sorted(p for p in folder.glob(f"{stem}-*-of-*.safetensors")
                    if pattern.fullmatch(p.name))
    counts = {int(pattern.fullmatch(p.name)[2]) for p in shards}
    if not shards or len(counts) != 1 or len(shards) != counts.pop():
        raise ModelError(f"{folder} lacks the weights {stem}.safetensors, or some of its "
                         f"shards ({stem}-0000k-of-0000N.safetensors): reinstall the model.")
    state: dict[str, torch.Tensor] = {}
    for path in shards:
        state.update(load_file(str(path)))
    return state

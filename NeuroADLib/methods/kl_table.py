"""How a CADD bundle stores its healthy cohort's KL percentiles (one map per noise level U and
latent position, with covariates and without): 8-bit codes of their logarithm.

A finer first stage makes the table large: on the `half` first stage's 48 x 56 x 48 latent, 20
levels of two float16 maps take 10.3 MB, over the 10 MB a tracked file may hold and a sixth of
what all bundles together may weigh. The percentiles span four to five decades per level (about
1e-6 to 0.3) and only act as thresholds (a latent position is inpainted where the subject's KL
exceeds it), so each level's logarithms are coded in 256 steps from that level's minimum to its
maximum: a relative error of at most exp(step / 2) - 1, about 1.6% at 8 nats a level, where
float16 already loses several percent below 6e-5. Tables written before this codec (float16
maps) still load.
"""

from __future__ import annotations

from pathlib import Path

import torch

PERCENTILES_FILE = "kl_percentiles.safetensors"
LEVELS_KEY = "levels"
RANGE_SUFFIX = "_log_range"  # (levels, 2): the lowest and highest logarithm of each level
CODES = 255
SMALLEST = 1e-12  # KL is >= 0; a zero percentile is stored as this


def encode_log8(table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 codes, (levels, 2) log range) of a (levels, ...) table of percentiles."""
    logarithm = table.float().clamp_min(SMALLEST).log()
    flat = logarithm.flatten(1)
    log_range = torch.stack([flat.min(dim=1).values, flat.max(dim=1).values], dim=1)
    low, step = _per_level(log_range, table.dim())
    codes = ((logarithm - low) / step).round().clamp(0, CODES)
    return codes.to(torch.uint8), log_range


def decode_log8(codes: torch.Tensor, log_range: torch.Tensor) -> torch.Tensor:
    """The float32 table that `encode_log8` coded."""
    low, step = _per_level(log_range, codes.dim())
    return (low + codes.float() * step).exp()


def _per_level(log_range: torch.Tensor, dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each level's lowest logarithm and code step, shaped to broadcast over a table of
    `dims` dimensions."""
    shape = (-1,) + (1,) * (dims - 1)
    low, high = log_range[:, 0], log_range[:, 1]
    return low.view(shape), ((high - low) / CODES).clamp_min(1e-12).view(shape)


def as_stored(table: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The table at the precision it is stored at, so that the model that computed it and
    every later load of the bundle use the same thresholds."""
    return {key: value if key == LEVELS_KEY else decode_log8(*encode_log8(value))
            for key, value in table.items()}


def save_percentiles(table: dict[str, torch.Tensor], folder: Path) -> None:
    """Write `table` (LEVELS_KEY and one (levels, ...) map per key) as 8-bit log codes."""
    from safetensors.torch import save_file

    tensors = {LEVELS_KEY: table[LEVELS_KEY].cpu()}
    for key, value in table.items():
        if key != LEVELS_KEY:
            tensors[key], tensors[key + RANGE_SUFFIX] = encode_log8(value.cpu())
    save_file(tensors, str(Path(folder) / PERCENTILES_FILE))


def load_percentiles(folder: Path) -> dict[str, torch.Tensor]:
    """The table a bundle stores (empty where it has none), as float32 maps."""
    from safetensors.torch import load_file

    path = Path(folder) / PERCENTILES_FILE
    if not path.is_file():
        return {}
    stored = load_file(str(path))
    table = {LEVELS_KEY: stored[LEVELS_KEY]}
    for key, value in stored.items():
        if key == LEVELS_KEY or key.endswith(RANGE_SUFFIX):
            continue
        table[key] = (decode_log8(value, stored[key + RANGE_SUFFIX])
                      if value.dtype == torch.uint8 else value.float())
    return table

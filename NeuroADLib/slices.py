"""Grid volumes as batches of axial slices and back, for the 2D methods (MAD-AD).

Grid arrays are (z, y, x); an axial slice is one z index, a (y, x) image. A 2D method sees the
slices that hold brain, in batches sized to a memory budget, and writes its per-slice outputs
back into a volume of the grid's shape (zero on slices without brain).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

# Slices with fewer brain voxels than this share of the largest slice are left out: the top
# and bottom few slices, where a 2D model sees mostly background.
MIN_BRAIN_SHARE = 0.05
# Bytes a 2D method needs per pixel of a slice during inference: the peak memory growth of
# MAD-AD's default encoder, UNet and decoder on a batch, measured at 0.07 GB for 8 slices of
# 112 x 96 (890 B per pixel) and 0.23 GB for 32 (690 B per pixel).
BYTES_PER_PIXEL = 900


def brain_slices(brain: np.ndarray, min_share: float = MIN_BRAIN_SHARE) -> np.ndarray:
    """The z indices whose slice holds at least `min_share` of the largest slice's brain."""
    counts = brain.reshape(brain.shape[0], -1).sum(axis=1)
    if counts.max() == 0:
        return np.zeros(0, dtype=int)
    return np.flatnonzero(counts >= min_share * counts.max())


def slice_batch_size(slice_shape: tuple[int, int], memory_bytes: float = 1e9,
                     bytes_per_pixel: int = BYTES_PER_PIXEL, most: int = 64) -> int:
    """How many slices fit in `memory_bytes` of activations (at least 1, at most `most`)."""
    per_slice = bytes_per_pixel * int(np.prod(slice_shape))
    return int(np.clip(memory_bytes // per_slice, 1, most))


def slice_batches(indices: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Consecutive runs of at most `batch_size` slice indices."""
    for start in range(0, len(indices), batch_size):
        yield indices[start:start + batch_size]


def map_slices(volume: np.ndarray, brain: np.ndarray,
               process: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
               batch_size: int, on_batch: Callable[[int, int], None] | None = None
               ) -> np.ndarray:
    """Apply `process(slices, brain_slices, z_indices)` ((n, y, x) arrays and their n slice
    indices in, (n, y, x) out) to the brain-holding axial slices of `volume`, batch by batch,
    and assemble a volume of its shape (zero on the other slices). `on_batch(done, total)`
    hears of every batch and may raise to stop."""
    indices = brain_slices(brain)
    out = np.zeros(volume.shape, np.float32)
    batches = list(slice_batches(indices, batch_size))
    for done, batch in enumerate(batches, start=1):
        out[batch] = process(volume[batch], brain[batch], batch)
        if on_batch is not None:
            on_batch(done, len(batches))
    return out

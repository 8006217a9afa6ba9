"""Pseudo-pathological versions of a 2D trainer's slice pool, for MAD-AD's `pathology_fill`:
each training volume lesioned `versions` times by NeuroAD's fluid-driven synthesis
(synthesis/lesions.py, the pathology-conditioned LDM's eq. 5-6 with Perlin shapes, never the
lesion library, whose masks are those of the real test cases), and every slice a lesion
crosses encoded by the frozen slice autoencoder, with the lesion's latent footprint (the
latent positions whose image block it touches).

Not in the MAD-AD paper, whose mask head only ever sees Gaussian noise in training and so
has no reason to flag a lesion at inference.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..methods.mad_ad import latent_brain
from ..synthesis.lesions import SynthesisConfig, synthesize
from .pathology_pairs import copy_seed
from .slice_data import SliceSet


@dataclass(frozen=True)
class PathologySliceSettings:
    """How many lesioned versions each training volume gets, and the seed they are drawn from;
    the synthesis knobs are SynthesisConfig's (UNA's)."""

    versions: int = 2
    seed: int = 0
    synthesis: SynthesisConfig = SynthesisConfig()


@dataclass
class PathologySlices:
    """Lesioned slices of the pool: `rows` (m,) index the pool's slices, `latents`
    (m, c, h, w) are the lesioned slices' latent means (unscaled) and `footprints` (m, 1, h, w)
    the latent positions their lesion touches."""

    rows: torch.Tensor
    latents: torch.Tensor
    footprints: torch.Tensor

    def scaled(self, scale: float) -> PathologySlices:
        return PathologySlices(self.rows, self.latents * scale, self.footprints)


@torch.no_grad()
def encode_pathology_slices(autoencoder, slices: SliceSet, settings: PathologySliceSettings,
                            device: str, log=print, batch: int = 64) -> PathologySlices:
    """Lesion every volume of `slices` `settings.versions` times (version k of volume i drawn
    with seed (settings.seed, i, k), so the set does not depend on the order of work) and encode
    the slices each lesion crosses."""
    row_of = {(int(k), int(z)): row for row, (k, z) in enumerate(slices.pairs)}
    factor = autoencoder.downsampling
    rows, latents, footprints = [], [], []
    began = time.perf_counter()
    for index, (image, mask) in enumerate(zip(slices.images, slices.masks, strict=True)):
        for version in range(settings.versions):
            seed = copy_seed(settings.seed, index, version)
            lesioned = synthesize(image, mask, seed, None, settings.synthesis)
            crossed = [int(z) for z in np.flatnonzero(lesioned.mask.any(axis=(1, 2)))
                       if (index, int(z)) in row_of]
            for start in range(0, len(crossed), batch):
                zs = crossed[start:start + batch]
                x = torch.from_numpy(lesioned.image[zs][:, None].astype(np.float32))
                latents.append(autoencoder.encode(x.to(device))[0].cpu())
                lesion = torch.from_numpy(lesioned.mask[zs][:, None].astype(np.float32))
                footprints.append(latent_brain(lesion, factor))
                rows.extend(row_of[(index, z)] for z in zs)
        if (index + 1) % 20 == 0 or index + 1 == len(slices.images):
            log(f"pathology fill: {index + 1}/{len(slices.images)} volumes lesioned "
                f"{settings.versions} times, {len(rows)} lesioned slices encoded "
                f"({time.perf_counter() - began:.0f} s)")
    return PathologySlices(torch.tensor(rows, dtype=torch.long), torch.cat(latents),
                           torch.cat(footprints))

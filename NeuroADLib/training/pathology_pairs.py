"""The training pairs of the pathology-conditioned LDM (section 2.2 and "Implementation
details" of its paper): for every healthy training scan, its latent (the target) and the latents
of several copies of it with fluid-driven pseudo-pathologies (the conditions), encoded once by
the frozen first stage and cached beside the checkpoint.

The lesion shapes are Perlin shapes reshaped by the flow (synthesis/lesions.py), not the lesion
library: the paper draws its initial shapes from ATLAS training masks, disjoint from its test
lesions, and the only real masks here are those of the real test cases.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..networks.autoencoder import encode_image
from ..synthesis.lesions import SynthesisConfig, synthesize
from .latent_diffusion import cached_tensors

PAIRS_FILE = "pairs.safetensors"


@dataclass(frozen=True)
class PairSettings:
    """How many pseudo-pathological versions each training scan gets (the paper: 8) and the
    seed they are drawn from; the synthesis knobs are SynthesisConfig's (UNA's)."""

    versions: int = 3
    seed: int = 0
    synthesis: SynthesisConfig = SynthesisConfig()


@dataclass
class PathologyPairs:
    """Latent means: `healthy` (N, C, d, h, w) and `pathological` (N, K, C, d, h, w), unscaled."""

    healthy: torch.Tensor
    pathological: torch.Tensor

    def scaled(self, scale: float) -> PathologyPairs:
        return PathologyPairs(self.healthy * scale, self.pathological * scale)

    def to(self, device: str) -> PathologyPairs:
        return PathologyPairs(self.healthy.to(device), self.pathological.to(device))

    def batch(self, rows: torch.Tensor, versions: torch.Tensor, anomalous: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(targets, conditions) of `rows`: the condition is pseudo-pathological version
        `versions` where `anomalous`, the healthy latent itself (an identity pair) elsewhere."""
        targets = self.healthy[rows]
        lesioned = self.pathological[rows, versions]
        keep = anomalous.reshape(-1, *([1] * (targets.dim() - 1)))
        return targets, torch.where(keep, lesioned, targets)


def copy_seed(seed: int, scan: int, version: int) -> int:
    """The synthesis seed of pseudo-pathological copy `version` of training scan `scan`:
    independent of the order in which copies are made."""
    return int(np.random.SeedSequence([seed, scan, version]).generate_state(1)[0])


def encode_pairs(autoencoder, images: list[np.ndarray], masks: list[np.ndarray],
                 settings: PairSettings, device: str = "cpu", log=print) -> PathologyPairs:
    """Encode every scan and `settings.versions` lesioned copies of it; copy k of scan i is
    synthesised with seed (settings.seed, i, k), so the pairs do not depend on the order of
    work."""
    healthy, pathological = [], []
    began = time.perf_counter()
    for index, (image, mask) in enumerate(zip(images, masks, strict=True)):
        healthy.append(encode_image(autoencoder, image, device=device)[0].cpu())
        copies = []
        for version in range(settings.versions):
            seed = copy_seed(settings.seed, index, version)
            lesioned = synthesize(image, mask, seed, None, settings.synthesis).image
            copies.append(encode_image(autoencoder, lesioned, device=device)[0].cpu())
        pathological.append(torch.stack(copies))
        if (index + 1) % 10 == 0 or index + 1 == len(images):
            log(f"pairs: {index + 1}/{len(images)} scans encoded with {settings.versions} "
                f"pseudo-pathological versions each ({time.perf_counter() - began:.0f} s)")
    return PathologyPairs(torch.stack(healthy), torch.stack(pathological))


def cached_pairs(path: Path, key: dict, compute) -> PathologyPairs:
    """The pairs kept at `path` when they were made from what `key` describes (the
    autoencoder's sha256, the scans, the pair settings), else `compute()`d and kept."""
    def tensors() -> dict[str, torch.Tensor]:
        pairs = compute()
        return {"healthy": pairs.healthy, "pathological": pairs.pathological}

    kept = cached_tensors(path, key, tensors)
    return PathologyPairs(kept["healthy"], kept["pathological"])


def pairs_key(autoencoder_sha256: str, subjects: list[str], settings: PairSettings,
              acquisition_copies: int) -> dict:
    """What a cached set of pairs was made from."""
    return {"autoencoder_sha256": autoencoder_sha256, "subjects": ",".join(subjects),
            "acquisition_copies": acquisition_copies,
            "settings": repr(asdict(settings))}

"""THOR: a DDPM with implicit guidance by temporal anomaly maps (Bercea et al. 2024), on the
axial slices of the 2 mm grid.

Inference, slice batch by slice batch (the paper's section 2 and its code):
    x_T' = sqrt(abar) x + sqrt(1 - abar) eps         noise the input to T' = 350
    for t = T', ..., 0:                               the reverse chain
        x0_hat = f(x_t, t)                            the network's clean-image estimate
        if t in {300, 150, 50}:                       a harmonisation level
            A_t = |x0_hat - x|                        the temporal anomaly map
            W = (dilate(close(A_t / max A_t)) + A_t / max A_t) / 2   (13 x 13, clipped to 1)
            x0_hat = W x0_hat + (1 - W) x             keep the input where it looks healthy
            x_{t_prev} = the guided x0_hat re-noised with the first noise eps
        else: x_{t_prev} = a DDPM (or respaced DDIM) step
    map = harmonic mean of the A_t and the final residual |x_0 - x|
then, on the volume: a 5^3 median filter and the brain mask eroded 3 times.

Deviations, and why: the paper's maps multiply the residual by LPIPS, which needs ImageNet
backbone weights this product does not ship; without them the residual alone is used (the
bundle and README say so). The paper normalises each map by its slice's maximum; here that
normalisation only shapes the blend weight W, and the output map is the harmonic mean of the
un-normalised residuals, so that it compares across slices and scans (the product calibrates
one threshold on healthy volumes). The guided estimate is re-noised to the next level of the
chain, not to the current one as the authors' code does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from .image_ddpm import (
    SliceDDPMMethod,
    SliceNoise,
    chain_levels,
    from_network,
    load_image_ddpm,
    steps_of,
    to_network,
)
from .registry import THOR_HARMONISATION_LEVELS as HARMONISATION_LEVELS
from .registry import thor_skipped_levels


@dataclass(frozen=True)
class THORSettings:
    """Inference knobs with the paper's defaults, but for the chain: respaced to every
    `stride`-th level with DDIM steps of `eta` (stride 1 and eta 1 are the paper's chain)."""

    t_start: int = 350  # the noise level the input is taken to
    stride: int = 50  # 1: every level, as the paper; 50: respaced for 2 CPU cores
    eta: float = 0.0  # 1: DDPM's posterior noise, as the paper; 0: deterministic DDIM
    closing_size: int = 13  # pixels, the grey closing and dilation of the blend weight
    median_size: int = 5  # median filter side (voxels); 1: none
    erosion: int = 3  # brain-mask erosions before scoring
    seed: int = 42

    def __post_init__(self) -> None:
        if self.t_start < max(HARMONISATION_LEVELS):
            raise ValueError(f"thor.t_start={self.t_start} is below the harmonisation level "
                             f"{max(HARMONISATION_LEVELS)}: choose {max(HARMONISATION_LEVELS)} "
                             "or more.")
        missed = thor_skipped_levels(self.t_start, self.stride)
        if missed:
            raise ValueError(f"thor.stride={self.stride} skips the harmonisation levels "
                             f"{missed} from t_start={self.t_start}: choose a stride that "
                             f"divides {np.gcd.reduce([self.t_start - t for t in missed])}.")

    @property
    def network_evaluations(self) -> int:
        return len(chain_levels(self.t_start, self.stride))


def harmonic_mean(maps: list[np.ndarray], floor: float = 1e-6) -> np.ndarray:
    """k / sum(1 / m_i), with values floored at `floor` (a zero in any map gives about 0)."""
    stacked = np.maximum(np.stack(maps), floor)
    return (len(maps) / (1.0 / stacked).sum(axis=0)).astype(np.float32)


def blend_weight(residual: np.ndarray, closing_size: int) -> np.ndarray:
    """W from a batch of residual maps (n, y, x): each slice's map over its maximum, grey-closed
    and dilated over `closing_size` pixels, averaged with itself and clipped to [0, 1]."""
    peak = residual.reshape(len(residual), -1).max(axis=1)[:, None, None]
    normalised = residual / np.maximum(peak, 1e-8)
    size = (1, closing_size, closing_size)
    region = ndimage.grey_dilation(ndimage.grey_closing(normalised, size=size, mode="nearest"),
                                   size=size, mode="nearest")
    return np.clip((region + normalised) / 2.0, 0.0, 1.0).astype(np.float32)


class THORModel(SliceDDPMMethod):
    title = "THOR"
    settings: THORSettings

    def restore(self, slices: np.ndarray, masks: np.ndarray, indices: np.ndarray
                ) -> tuple[np.ndarray, list[np.ndarray]]:
        """THOR's pseudo-healthy slices (n, y, x) on [0, 1] and the residual maps at the
        harmonisation levels and at the end."""
        settings, ddpm = self.settings, self.ddpm
        device = ddpm.device
        noise = SliceNoise(settings.seed, ddpm.noise)
        x = torch.from_numpy(slices[:, None].astype(np.float32)).to(device)
        inside = torch.from_numpy(masks[:, None].astype(np.float32)).to(device)
        first = noise.initial(indices, slices.shape[1:], settings.t_start).to(device)
        z = ddpm.diffusion.q_sample(to_network(x), torch.tensor([settings.t_start]), first)
        maps = []
        levels = chain_levels(settings.t_start, settings.stride)
        for t, t_prev in steps_of(levels):
            x0, eps = ddpm.estimate(z, t)
            if t in HARMONISATION_LEVELS:
                estimate = from_network(x0) * inside
                residual = ((estimate - x).abs() * inside)[:, 0].cpu().numpy()
                maps.append(residual)
                weight = torch.from_numpy(
                    blend_weight(residual, settings.closing_size)[:, None]).to(device)
                x0 = to_network(weight * estimate + (1.0 - weight) * x)
                z = (ddpm.diffusion.q_sample(x0, torch.tensor([t_prev]), first)
                     if t_prev >= 0 else x0)
            else:
                z = ddpm.step(x0, eps, t, t_prev, settings.eta, noise, indices)
        restored = (from_network(z).clamp(0.0, 1.0) * inside)[:, 0].cpu().numpy()
        maps.append(np.abs(restored - slices) * masks)
        return restored, maps

    def restore_batch(self, slices: np.ndarray, masks: np.ndarray, indices: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
        """(harmonic-mean map, THOR's pseudo-healthy slices) of a batch."""
        restored, maps = self.restore(slices, masks, indices)
        return harmonic_mean(maps) * masks, restored


def load_thor(folder: str | Path, name: str = "thor", options: dict | None = None
              ) -> THORModel:
    """THOR from the shared DDPM bundle, with the bundle's THOR settings and `options`."""
    ddpm, inference = load_image_ddpm(folder)
    return THORModel(ddpm, THORSettings(**{**inference.get("thor", {}), **(options or {})}))

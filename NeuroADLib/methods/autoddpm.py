"""AutoDDPM: mask, stitch and re-sample (Bercea et al. 2023), on the axial slices of the 2 mm
grid, with the DDPM it shares with THOR.

Inference, slice batch by slice batch (the paper's section 2 and its code):
    x_rec = the DDPM chain from x noised to t = 200             coarse pseudo-healthy slice
    A = clip(|x - x_rec| / P95(|x - x_rec|), 0, 1)              the normalised residual
    M = dilate(A >= tau)                                        tau: at most 5% of healthy
                                                                validation brain pixels above
    z = x_rec noised to t = 50                                  re-sample from the stitch
    for t = 50, ..., 0, each step `resample` times (RePaint):
        z_{t-1} = M * step(z_t) + (1 - M) * q(x at t - 1)       known region: the input
        unless the last repetition: z_t = z_{t-1} re-noised one step
    map = |x - z_0| * A
then, on the volume: a 5^3 median filter and the brain mask eroded 3 times.

Deviations, and why: the paper multiplies A by LPIPS, which needs ImageNet backbone weights
this product does not ship; without them A is the normalised residual alone (the bundle and
README say so). The 95th percentile that normalises A is taken over the slice's brain pixels
(the paper's over the whole image, mostly background). Because A is clipped at 1, tau ends up
at 1 when no LPIPS factor spreads the values, and M is then each slice's most deviating 5%,
dilated; the mask is taken as A >= tau so that this case still masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from ..slices import brain_slices
from .image_ddpm import (
    SliceDDPMMethod,
    SliceNoise,
    chain_levels,
    from_network,
    load_image_ddpm,
    steps_of,
    to_network,
)


@dataclass(frozen=True)
class AutoDDPMSettings:
    """Inference knobs with the paper's defaults, but for the chains: respaced to every
    `stride`-th level with DDIM steps of `eta` (stride 1 and eta 1 are the paper's).
    `mask_threshold` (tau) is calibrated on healthy validation scans, at `mask_fpr`, when
    the bundle is built."""

    t_coarse: int = 200  # the coarse reconstruction's noise level
    t_inpaint: int = 50  # where re-sampling starts
    resample: int = 4  # repetitions of each re-sampling step (the code's resample_steps)
    percentile: float = 95.0  # of the residual, per slice, that normalises A
    stride: int = 50  # 1: every level, as the paper; 50: respaced for 2 CPU cores
    eta: float = 0.0  # 1: DDPM's posterior noise, as the paper; 0: deterministic DDIM
    median_size: int = 5  # median filter side (voxels); 1: none
    erosion: int = 3  # brain-mask erosions before scoring
    seed: int = 42
    mask_fpr: float = 0.05  # share of healthy brain pixels tau lets into the mask
    mask_threshold: float = 1.0  # tau, as calibrated

    def __post_init__(self) -> None:
        if self.t_inpaint > self.t_coarse:
            raise ValueError(f"autoddpm.t_inpaint={self.t_inpaint} is above "
                             f"autoddpm.t_coarse={self.t_coarse}: re-sampling starts at or "
                             "below the coarse level.")

    @property
    def network_evaluations(self) -> int:
        return (len(chain_levels(self.t_coarse, self.stride))
                + self.resample * len(chain_levels(self.t_inpaint, self.stride)))


def normalised_residual(residual: np.ndarray, masks: np.ndarray, percentile: float
                        ) -> np.ndarray:
    """A: each slice's residual over its `percentile` inside the brain, clipped to [0, 1]."""
    out = np.zeros_like(residual, dtype=np.float32)
    for k, (r, m) in enumerate(zip(residual, masks, strict=True)):
        inside = r[m > 0]
        if inside.size:
            out[k] = np.clip(r / max(np.percentile(inside, percentile), 1e-8), 0.0, 1.0) * m
    return out


class AutoDDPMModel(SliceDDPMMethod):
    title = "AutoDDPM"
    settings: AutoDDPMSettings

    def chain(self, z: torch.Tensor, t_start: int, noise: SliceNoise, indices: np.ndarray
              ) -> torch.Tensor:
        """Denoise z (at level t_start) to the clean image, on [-1, 1]."""
        for t, t_prev in steps_of(chain_levels(t_start, self.settings.stride)):
            x0, eps = self.ddpm.estimate(z, t)
            z = self.ddpm.step(x0, eps, t, t_prev, self.settings.eta, noise, indices)
        return z

    def coarse(self, slices: np.ndarray, masks: np.ndarray, indices: np.ndarray,
               noise: SliceNoise) -> tuple[np.ndarray, np.ndarray]:
        """(x_rec on [0, 1], A) for a batch of slices (n, y, x)."""
        diffusion, device = self.ddpm.diffusion, self.ddpm.device
        x = to_network(torch.from_numpy(slices[:, None].astype(np.float32)).to(device))
        first = noise.initial(indices, slices.shape[1:], self.settings.t_coarse).to(device)
        z = diffusion.q_sample(x, torch.tensor([self.settings.t_coarse]), first)
        x_rec = from_network(self.chain(z, self.settings.t_coarse, noise, indices)).clamp(0, 1)
        x_rec = x_rec[:, 0].cpu().numpy() * masks
        return x_rec, normalised_residual(np.abs(slices - x_rec) * masks, masks,
                                          self.settings.percentile)

    def resample_masked(self, slices: np.ndarray, x_rec: np.ndarray, mask: np.ndarray,
                        indices: np.ndarray, noise: SliceNoise) -> np.ndarray:
        """RePaint from x_rec noised to t_inpaint: the model inside `mask`, the noised input
        outside, each step repeated `resample` times. The result on [0, 1]."""
        settings, ddpm, device = self.settings, self.ddpm, self.ddpm.device
        diffusion = ddpm.diffusion
        shape = slices.shape[1:]
        x = to_network(torch.from_numpy(slices[:, None].astype(np.float32)).to(device))
        unknown = torch.from_numpy(mask[:, None].astype(np.float32)).to(device)
        start = noise.gaussian(indices, shape).to(device)
        z = diffusion.q_sample(to_network(torch.from_numpy(x_rec[:, None]).to(device)),
                               torch.tensor([settings.t_inpaint]), start)
        for t, t_prev in steps_of(chain_levels(settings.t_inpaint, settings.stride)):
            for repetition in range(settings.resample):
                x0, eps = ddpm.estimate(z, t)
                sampled = ddpm.step(x0, eps, t, t_prev, settings.eta, noise, indices)
                known = (diffusion.q_sample(x, torch.tensor([t_prev]),
                                            noise.gaussian(indices, shape).to(device))
                         if t_prev >= 0 else x)
                z = unknown * sampled + (1.0 - unknown) * known
                if repetition + 1 < settings.resample and t_prev >= 0:
                    z = diffusion.renoise(z, t_prev, t, noise.gaussian(indices, shape).to(device))
        return from_network(z).clamp(0.0, 1.0)[:, 0].cpu().numpy()

    def restore_batch(self, slices: np.ndarray, masks: np.ndarray, indices: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
        """(|x - inpainted| x A, the inpainted slices) of a batch: coarse reconstruction, mask,
        re-sampling."""
        noise = SliceNoise(self.settings.seed, self.ddpm.noise)
        x_rec, weight = self.coarse(slices, masks, indices, noise)
        mask = ndimage.binary_dilation(weight >= self.settings.mask_threshold,
                                       structure=np.ones((1, 3, 3), bool)) & (masks > 0)
        restored = self.resample_masked(slices, x_rec, mask, indices, noise) * masks
        return np.abs(slices - restored) * weight, restored


def mask_threshold_from_healthy(model: AutoDDPMModel, validation) -> float:
    """tau: the (1 - mask_fpr) quantile of A over the brain pixels of healthy validation scans
    (a CohortSplit, harmonised), so that at most mask_fpr of them reach it."""
    values = []
    for image, brain in zip(validation.images, validation.masks, strict=True):
        indices = brain_slices(brain)
        for batch in np.array_split(indices, max(1, len(indices) // 32)):
            masks = brain[batch].astype(np.float32)
            noise = SliceNoise(model.settings.seed, model.ddpm.noise)
            _, weight = model.coarse(image[batch], masks, batch, noise)
            values.append(weight[masks > 0])
    return float(np.quantile(np.concatenate(values), 1.0 - model.settings.mask_fpr))


def load_autoddpm(folder: str | Path, name: str = "autoddpm", options: dict | None = None
                  ) -> AutoDDPMModel:
    """AutoDDPM from the shared DDPM bundle, with the bundle's AutoDDPM settings (its calibrated
    mask threshold among them) and `options`."""
    ddpm, inference = load_image_ddpm(folder)
    settings = AutoDDPMSettings(**{**inference.get("autoddpm", {}), **(options or {})})
    return AutoDDPMModel(ddpm, settings)

"""TDM: a plausible follow-up scan from a baseline scan, its age and the time gap (the
longitudinal report, chapter 6, after TADM), on the axial slices of the 2 mm grid.

TDM models the residual between two visits, not the follow-up itself (section 6.1):
    dx_T ~ N(0, I)
    dx_0 = DDIM(eps_theta(dx_t, t; x_a, l_a, dl))       eq. 6.1's network, deterministic steps
    x_b  = x_a + dx_0                                   the imputed follow-up
The residual is modelled divided by the bundle's `residual_scale` (residuals are a few
hundredths of the intensity range; the diffusion runs on a unit scale). The baseline enters
the network on [-1, 1]. On a scan: the residual is computed on the scan harmonised to the
bundle's intensity standard and added back on the scan's own scale, so the follow-up keeps the
scan's own detail; outside the brain it is the scan.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..diffusion.process import DiffusionConfig, DiffusionProcess
from ..models.weights import load_weights
from ..networks.conditioned_unet import ConditionedUNetConfig, TemporalNetwork
from ..preprocessing.harmonisation import IntensityStandard
from ..progress import StepCallback
from ..slices import map_slices, slice_batch_size
from .image_ddpm import SliceNoise, chain_levels, steps_of, to_network

NETWORK_FOLDER, WEIGHTS_STEM = "network", "tdm"
CLIP = 40.0  # the largest residual sampled, in residual scales (training: up to about 25)


@dataclass(frozen=True)
class TDMSettings:
    """Sampling knobs: DDIM steps from T - 1 to the clean residual (the report does not give
    its count), eta (0: deterministic given the seed's starting noise), the seed."""

    steps: int = 20
    eta: float = 0.0
    seed: int = 42


def tdm_diffusion(prediction_type: str = "v_prediction") -> DiffusionConfig:
    """T = 1000, linear betas 1e-4 -> 0.02 (Table 6.1); v prediction by default, where the
    report predicts epsilon: NeuroAD's residuals are small and smooth, and a network that
    predicts epsilon learns nothing of them at the high levels where sampling starts (its
    samples were uncorrelated with the pairs' change; see training/tdm.py)."""
    return DiffusionConfig(num_timesteps=1000, schedule="linear", beta_start=1e-4,
                           beta_end=2e-2, prediction_type=prediction_type)


@dataclass
class TDMModel:
    """TDM's network, diffusion process and residual scale, and the intensity standard of its
    training scans (None: scans are taken as they are)."""

    network: TemporalNetwork
    diffusion: DiffusionProcess
    residual_scale: float
    settings: TDMSettings = TDMSettings()
    standard: IntensityStandard | None = None
    batch_size: int = 0  # slices per batch; 0: chosen for memory
    device: str = "cpu"

    def to(self, device: str) -> TDMModel:
        self.network.to(device)
        self.device = device
        return self

    @torch.no_grad()
    def residual(self, baseline: torch.Tensor, age: float, gap: float, slices: np.ndarray,
                 noise: SliceNoise) -> torch.Tensor:
        """dx_0 for baseline slices (n, 1, y, x) on [0, 1], on their intensity scale."""
        n = len(baseline)
        x_a = to_network(baseline)
        ages = torch.full((n,), float(age), device=baseline.device)
        gaps = torch.full((n,), float(gap), device=baseline.device)
        top = self.diffusion.num_timesteps - 1
        levels = chain_levels(top, max(1, self.diffusion.num_timesteps // self.settings.steps))
        z = noise.initial(slices, tuple(baseline.shape[2:]), top).to(baseline.device)
        for t, t_prev in steps_of(levels):
            level = torch.full((n,), t, device=z.device)
            x0, _ = self.diffusion.x0_and_eps(self.network(z, level, x_a, ages, gaps), z,
                                              level)
            # the residual clipped to +-CLIP residual scales, with the eps
            # consistent with it (clip_sample, as MONAI's schedulers)
            x0 = x0.clamp(-CLIP, CLIP)
            abar = self.diffusion.alpha_bar(level, z)
            eps = (z - abar.sqrt() * x0) / (1.0 - abar).sqrt()
            step_noise = (noise.gaussian(slices, tuple(z.shape[2:])).to(z.device)
                          if self.settings.eta > 0 else None)
            z = self.diffusion.ddim_step(x0, eps, t, t_prev, self.settings.eta, step_noise)
        return z * self.residual_scale

    def impute(self, image: np.ndarray, brain: np.ndarray, age: float, to_age: float,
               on_step: StepCallback | None = None) -> np.ndarray:
        """The scan `image` (grid, with its brain mask) as TDM expects it at `to_age`."""
        if to_age < age:
            raise ValueError(f"TDM imputes forward in time: to_age {to_age} is before the "
                             f"baseline's age {age}.")
        multiple = self.network.config.size_multiple
        if image.shape[1] % multiple or image.shape[2] % multiple:
            raise ValueError(f"TDM needs axial slices whose sides are multiples of {multiple}, "
                             f"not {image.shape[1:]}")
        brain = np.asarray(brain) > 0
        harmonised, gain = ((image, 1.0) if self.standard is None
                            else self.standard.harmonise(image, brain))
        noise = SliceNoise(self.settings.seed)

        def process(slices: np.ndarray, masks: np.ndarray, batch: np.ndarray) -> np.ndarray:
            baseline = torch.from_numpy(slices[:, None].astype(np.float32)).to(self.device)
            change = self.residual(baseline, age, to_age - age, batch, noise)
            return change[:, 0].cpu().numpy() * masks

        batch_size = self.batch_size or slice_batch_size(image.shape[1:])
        change = map_slices(harmonised, brain, process, batch_size, on_step)
        return (image + change / gain * brain).astype(np.float32)


def load_tdm(folder: str | Path, options: dict | None = None) -> TDMModel:
    """TDM from its bundle: network/ (weights, config, diffusion process, residual scale),
    the intensity standard, and the manifest's sampling settings with `options` over them."""
    folder = Path(folder)
    bundle = json.loads((folder / "manifest.json").read_text())
    manifest = json.loads((folder / NETWORK_FOLDER / "manifest.json").read_text())
    network = TemporalNetwork(ConditionedUNetConfig.from_dict(manifest["config"]))
    network.load_state_dict(load_weights(folder / NETWORK_FOLDER, WEIGHTS_STEM))
    settings = TDMSettings(**{**bundle.get("inference", {}), **(options or {})})
    if not 1 <= settings.steps <= tdm_diffusion().num_timesteps:
        raise ValueError(f"TDM steps must be from 1 to 1000, not {settings.steps}.")
    return TDMModel(network.eval(), DiffusionProcess(DiffusionConfig(**manifest["diffusion"])),
                    float(manifest["residual_scale"]), settings, IntensityStandard.load(folder))

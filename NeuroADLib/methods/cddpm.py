"""cDDPM: a DDPM conditioned on the clean input (Behrendt et al. 2023), on the axial slices of
the 2 mm grid.

Inference (sections 3.1-3.2 and 4.3), slice batch by slice batch:
    c = F_enc(x0)                                   the context of the noise-free slice
    for t_test in {250, 500, 750}:                  the ensemble of noise levels
        for each of `draws` noise draws (1: the paper)
            x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps,   eps simplex noise
            x_rec(t_test, eps) = f_theta(x_t, t_test, c)    one step: the network predicts x0
    x_rec = mean over t_test and eps of x_rec(t_test, eps)
    R = |x0 - x_rec|                                the residual map
then, on the volume: a 5^3 median filter and the brain mask eroded 3 times (section 4.3).

Images enter the network on [-1, 1] (2 x - 1 of the grid's [0, 1] intensities), where the
forward process's noise has the signal's scale.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..diffusion.noise import SimplexNoise, gaussian_noise
from ..diffusion.process import DiffusionConfig, DiffusionProcess
from ..models.weights import load_weights
from ..networks.conditioned_unet import ConditionedUNetConfig, EncoderConditionedNetwork
from ..postprocessing import filtered_in_eroded_brain
from ..progress import StepCallback
from ..slices import brain_slices, map_slices, slice_batch_size
from ..subject import UNKNOWN, Subject
from .base import method_settings

NETWORK_FOLDER, WEIGHTS_STEM = "network", "cddpm"
NOISES = ("simplex", "gaussian")


@dataclass(frozen=True)
class CDDPMSettings:
    """Inference knobs with the paper's defaults (sections 4.3-4.4)."""

    t_min: int = 250  # the ensemble's lowest noise level
    t_max: int = 750  # its highest
    levels: int = 3  # noise levels from t_min to t_max, evenly spaced; 1: their midpoint
    draws: int = 1  # noise draws per level, averaged (1: the paper; more: a quieter estimate)
    median_size: int = 5  # median filter side (voxels); 1: none
    gaussian_sigma: float = 0.0  # a Gaussian after the median (voxels); 0: none, the paper's
    erosion: int = 3  # brain-mask erosions before scoring
    seed: int = 42

    def noise_levels(self) -> list[int]:
        if self.levels == 1:
            return [(self.t_min + self.t_max) // 2]
        return [int(round(t)) for t in np.linspace(self.t_min, self.t_max, self.levels)]

    def ensemble(self) -> list[int]:
        """The noise level of every one-step estimate: the levels, once per draw."""
        return self.noise_levels() * self.draws


def cddpm_diffusion() -> DiffusionConfig:
    """T = 1000, cosine schedule (the authors' code), x0 ("sample") prediction."""
    return DiffusionConfig(num_timesteps=1000, schedule="cosine", prediction_type="sample")


def forward_noise(kind: str, shape: tuple[int, ...], t: torch.Tensor,
                  generator: torch.Generator) -> torch.Tensor:
    """The forward process's noise: simplex (the paper) or Gaussian."""
    if kind == "simplex":
        return SimplexNoise().sample(shape, t, generator)
    if kind == "gaussian":
        return gaussian_noise(shape, generator)
    raise ValueError(f"Unknown noise {kind!r}; noises: {', '.join(NOISES)}.")


def to_network(x: torch.Tensor) -> torch.Tensor:
    return 2.0 * x - 1.0


def from_network(x: torch.Tensor) -> torch.Tensor:
    return (x + 1.0) / 2.0


@dataclass
class CDDPMModel:
    network: EncoderConditionedNetwork
    diffusion: DiffusionProcess
    noise: str
    settings: CDDPMSettings
    batch_size: int = 0  # slices per batch; 0: chosen for memory
    device: str = "cpu"
    noise_bank: dict = field(default_factory=dict)  # slice shape -> level_noises' draws

    def to(self, device: str) -> CDDPMModel:
        self.network.to(device)
        self.device = device
        return self

    def level_noises(self, count: int, slice_shape: tuple[int, int]) -> torch.Tensor:
        """eps of every brain slice for every estimate of the ensemble, drawn from the seed so
        that the result does not depend on how slices are batched: (count, estimates, 1, y,
        x). Slice k's noise does not depend on `count` either (the draws go slice by slice),
        so the noise is drawn once per slice shape and kept: simplex noise costs more than the
        network."""
        bank = self.noise_bank.get(tuple(slice_shape))
        if bank is None or len(bank) < count:
            ensemble = self.settings.ensemble()
            generator = torch.Generator().manual_seed(self.settings.seed)
            t = torch.tensor(ensemble).repeat(count)
            bank = forward_noise(self.noise, (count * len(ensemble), 1, *slice_shape), t,
                                 generator).reshape(count, len(ensemble), 1, *slice_shape)
            self.noise_bank[tuple(slice_shape)] = bank
        return bank[:count]

    @torch.no_grad()
    def reconstruct(self, x0: torch.Tensor, noises: torch.Tensor) -> torch.Tensor:
        """The ensemble's mean one-step reconstruction of slices x0 (n, 1, y, x) on [0, 1];
        `noises` (n, estimates, 1, y, x). The whole ensemble of the batch goes through the
        network at once."""
        ensemble = self.settings.ensemble()
        n = len(x0)
        x = to_network(x0)
        t = torch.tensor(ensemble, device=x.device).repeat_interleave(n)
        stacked = x.repeat(len(ensemble), 1, 1, 1)
        xt = self.diffusion.q_sample(stacked, t, noises.transpose(0, 1).reshape(stacked.shape))
        output = self.network(xt, t, stacked)
        x_rec, _ = self.diffusion.x0_and_eps(output, xt, t)
        return from_network(x_rec.reshape(len(ensemble), n, *x0.shape[1:]).mean(dim=0))

    def predict(self, image: np.ndarray, brain: np.ndarray, subject: Subject = UNKNOWN,
                on_step: StepCallback | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(post-processed residual map, pseudo-healthy image) on the grid, over the axial
        slices that hold enough brain (the map is 0 on the others); `on_step(done, total)`
        hears of every slice batch and may raise to stop. cDDPM has no covariates: `subject`
        is not used."""
        multiple = self.network.config.size_multiple
        if image.shape[1] % multiple or image.shape[2] % multiple:
            raise ValueError(f"cDDPM needs axial slices whose sides are multiples of "
                             f"{multiple}, not {image.shape[1:]}")
        indices = brain_slices(brain)
        noises = self.level_noises(len(indices), image.shape[1:])
        position = {int(z): k for k, z in enumerate(indices)}
        healthy = (image * brain).astype(np.float32)  # slices too small to model keep the scan

        def process(slices: np.ndarray, masks: np.ndarray, batch: np.ndarray) -> np.ndarray:
            x0 = torch.from_numpy(slices[:, None].astype(np.float32)).to(self.device)
            rows = [position[int(k)] for k in batch]
            x_rec = self.reconstruct(x0, noises[rows].to(self.device))[:, 0].cpu().numpy()
            healthy[batch] = x_rec * masks
            return np.abs(slices - x_rec) * masks

        estimates = len(self.settings.ensemble())
        batch_size = self.batch_size or max(1, slice_batch_size(image.shape[1:]) // estimates)
        residual = map_slices(image, brain, process, batch_size, on_step)
        return filtered_in_eroded_brain(residual, brain, self.settings.median_size,
                                        self.settings.erosion,
                                        self.settings.gaussian_sigma), healthy


def load_cddpm(folder: str | Path, name: str = "cddpm", options: dict | None = None
               ) -> CDDPMModel:
    """cDDPM from its bundle: network/ (weights, the config it was built with, its diffusion
    process and noise) and the bundle manifest's inference settings."""
    folder = Path(folder)
    bundle = json.loads((folder / "manifest.json").read_text())
    manifest = json.loads((folder / NETWORK_FOLDER / "manifest.json").read_text())
    network = EncoderConditionedNetwork(ConditionedUNetConfig.from_dict(manifest["config"]))
    network.load_state_dict(load_weights(folder / NETWORK_FOLDER, WEIGHTS_STEM))
    settings = CDDPMSettings(**{**method_settings(bundle.get("inference", {}), name),
                                **(options or {})})
    return CDDPMModel(network.eval(), DiffusionProcess(DiffusionConfig(**manifest["diffusion"])),
                      manifest["noise"], settings)

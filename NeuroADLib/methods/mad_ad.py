"""MAD-AD: masked latent diffusion for brain anomaly detection (Beizaee et al. 2025), on the
axial slices of the 2 mm grid.

Inference (section 3.2), slice batch by slice batch:
    z'_T = E(x) * scale                        the clean latent is the last level (no noise)
    for t = T-1 ... 0 (DDIM, `steps` levels):
        z~0, m = f_theta(z'_t, t)              x0 estimate and mask-head logit
        eps~ = (z'_t - sqrt(abar_t) z~0) / sqrt(1 - abar_t)                      (eq. 7)
        z'_{t-1} = B(m) [sqrt(abar_{t-1}) z~0 + sqrt(1 - abar_{t-1} - s^2) eps~ + s eps]
                   + (1 - B(m)) z'_t           s from eta (0.5 in the paper)      (eq. 6)
    x~ = D(z'_0 / scale)
    a = G * min(|x~ - r|, gamma) / gamma                                          (eq. 8)

B binarises the mask head's probability at `mask_threshold` (only positions it flags are
updated). r, the image the pseudo-healthy one is compared with, is the autoencoder's
reconstruction D(E(x)) as in the authors' code (`reference="reconstruction"`), so that the
autoencoder's own error cancels, or the input itself (`reference="input"`, eq. 8 as printed).
G is a 2D Gaussian of `smoothing_sigma_mm` per slice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from ..diffusion.process import DiffusionConfig, DiffusionProcess, respaced_levels
from ..networks.autoencoder import load_autoencoder
from ..networks.masked_unet import MaskedUNet, MaskedUNetConfig
from ..progress import StepCallback
from ..slices import brain_slices, map_slices, slice_batch_size
from ..subject import UNKNOWN, Subject
from .base import method_settings

AUTOENCODER_FOLDER, DENOISER_FOLDER = "autoencoder", "denoiser"
REFERENCES = ("reconstruction", "input")


@dataclass(frozen=True)
class MADADSettings:
    """Inference knobs with the paper's defaults (section 4.1 and Table 3)."""

    steps: int = 10  # DDIM steps (T = 10 levels)
    eta: float = 0.5  # sigma_t of eq. 6
    gamma: float = 0.25  # clip of eq. 8 (the authors' code)
    smoothing_sigma_mm: float = 4.0  # G of eq. 8: 5 pixels of the authors' ~0.9 mm slices
    mask_threshold: float = 0.5  # B: positions whose mask probability exceeds it are updated
    reference: str = "reconstruction"
    seed: int = 42


def mad_ad_diffusion() -> DiffusionConfig:
    """T = 10, cosine schedule, x0 ("sample") prediction (section 4.1; the authors' code)."""
    return DiffusionConfig(num_timesteps=10, schedule="cosine", prediction_type="sample")


def latent_brain(brain: torch.Tensor, factor: int) -> torch.Tensor:
    """A latent position is brain if any image pixel of its factor x factor block is."""
    return torch.nn.functional.max_pool2d(brain.float(), factor)


@dataclass
class MADADModel:
    autoencoder: torch.nn.Module
    denoiser: MaskedUNet
    latent_scale: float
    diffusion: DiffusionProcess
    settings: MADADSettings
    spacing_mm: float = 2.0
    batch_size: int = 0  # slices per batch; 0: chosen for memory
    device: str = "cpu"

    def to(self, device: str) -> MADADModel:
        self.autoencoder.to(device)
        self.denoiser.to(device)
        self.device = device
        return self

    @torch.no_grad()
    def encode(self, slices: torch.Tensor) -> torch.Tensor:
        """Scaled latent means of (n, 1, y, x) slices."""
        return self.autoencoder.encode(slices)[0] * self.latent_scale

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(latents / self.latent_scale)

    @torch.no_grad()
    def masked_reverse(self, z: torch.Tensor, brain: torch.Tensor, noises: torch.Tensor,
                       restore: torch.Tensor | None = None) -> torch.Tensor:
        """Eq. 6 from z'_T = z (the clean latent) down to z'_0; `noises` (steps, *z.shape) are
        the eps of every step, `brain` the latent brain mask (positions outside it are never
        noised in training and are left as they are). `restore`: the positions updated at
        every step instead of those the mask head flags (what the chain makes of a given
        mask: benchmarks/mad_ad_oracle_mask.py)."""
        levels = respaced_levels(self.diffusion.num_timesteps, self.settings.steps)
        for index, t in enumerate(levels):
            t_prev = levels[index + 1] if index + 1 < len(levels) else -1
            x0, logit = self.denoiser(z, torch.full((len(z),), t, device=z.device))
            x0, eps = self.diffusion.x0_and_eps(x0, z, torch.tensor([t]))
            flagged = (torch.sigmoid(logit) > self.settings.mask_threshold).float()
            update = (flagged if restore is None else restore) * brain
            stepped = self.diffusion.ddim_step(x0, eps, t, t_prev, self.settings.eta,
                                               noises[index])
            z = update * stepped + (1.0 - update) * z
        return z

    def step_noises(self, count: int, latent_shape: tuple[int, ...]) -> torch.Tensor:
        """eps for every brain slice and step, drawn once from the seed so that the result
        does not depend on how slices are batched: (count, steps, *latent_shape)."""
        generator = torch.Generator().manual_seed(self.settings.seed)
        return torch.randn((count, self.settings.steps, *latent_shape), generator=generator)

    def residual_map(self, pseudo: np.ndarray, reference: np.ndarray, masks: np.ndarray
                     ) -> np.ndarray:
        """Eq. 8 on (n, y, x) slices: G * min(|x~ - r|, gamma) / gamma inside the brain."""
        clipped = np.minimum(np.abs(pseudo - reference), self.settings.gamma)
        clipped /= self.settings.gamma
        sigma = self.settings.smoothing_sigma_mm / self.spacing_mm
        return np.stack([ndimage.gaussian_filter(c, sigma) for c in clipped]) * masks

    def predict(self, image: np.ndarray, brain: np.ndarray, subject: Subject = UNKNOWN,
                on_step: StepCallback | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(anomaly map of eq. 8, pseudo-healthy image D(z'_0)) on the grid, over the axial
        slices that hold enough brain (slices.brain_slices; the map is 0 on the others);
        `on_step(done, total)` hears of every slice batch and may raise to stop. MAD-AD has no
        covariates: `subject` is not used."""
        factor = self.autoencoder.downsampling
        indices = brain_slices(brain)
        latent_shape = (self.denoiser.config.latent_channels,
                        image.shape[1] // factor, image.shape[2] // factor)
        noises = self.step_noises(len(indices), latent_shape)
        position = {int(z): k for k, z in enumerate(indices)}
        # slices too small to model (the top and bottom of the brain) keep the scan itself
        healthy = (image * brain).astype(np.float32)

        def process(slices: np.ndarray, masks: np.ndarray, batch: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(slices[:, None].astype(np.float32)).to(self.device)
            mask = torch.from_numpy(masks[:, None].astype(np.float32)).to(self.device)
            z = self.encode(x)
            rows = [position[int(k)] for k in batch]
            final = self.masked_reverse(z, latent_brain(mask, factor),
                                        noises[rows].transpose(0, 1).to(self.device))
            pseudo = self.decode(final).clamp(0, 1)[:, 0].cpu().numpy()
            reference = (self.decode(z).clamp(0, 1)[:, 0].cpu().numpy()
                         if self.settings.reference == "reconstruction" else slices)
            healthy[batch] = pseudo * masks
            return self.residual_map(pseudo, reference, masks)

        batch_size = self.batch_size or slice_batch_size(image.shape[1:])
        anomaly = map_slices(image, brain, process, batch_size, on_step)
        return anomaly.astype(np.float32), healthy


def load_mad_ad(folder: str | Path, name: str = "mad_ad", options: dict | None = None
                ) -> MADADModel:
    """MAD-AD from its bundle: autoencoder/ and denoiser/ (weights and the configs they were
    built with), and the bundle manifest's diffusion process and inference settings."""
    from safetensors.torch import load_file

    folder = Path(folder)
    bundle = json.loads((folder / "manifest.json").read_text())
    autoencoder, _ = load_autoencoder(folder / AUTOENCODER_FOLDER)
    denoiser_manifest = json.loads((folder / DENOISER_FOLDER / "manifest.json").read_text())
    denoiser = MaskedUNet(MaskedUNetConfig.from_dict(denoiser_manifest["config"]))
    denoiser.load_state_dict(load_file(str(folder / DENOISER_FOLDER /
                                           "masked_unet.safetensors")))
    settings = MADADSettings(**{**method_settings(bundle.get("inference", {}), name),
                                **(options or {})})
    return MADADModel(autoencoder, denoiser.eval(),
                      float(denoiser_manifest["latent_scale"]),
                      DiffusionProcess(DiffusionConfig(**denoiser_manifest["diffusion"])),
                      settings, float(bundle.get("spacing_mm", 2.0)))

"""The pathology-conditioned latent diffusion model (`cond_ldm`; "pathology-conditioned LDM with
fluid-driven anomaly randomization", section 2.2), in the 3D latent space of the first-stage
autoencoder that CADD shares.

Training (training/cond_ldm.py) pairs a healthy latent z_0 (the target) with the latent z_p of
the same scan carrying fluid-driven pseudo-pathologies (the condition, eq. 3-6); the UNet
eps_theta is conditioned through AdaGN on c_p = Enc(z_p) and learns eq. 7 with learned
variance (the full bound, eq. 1). At inference the condition is the test scan itself:

    z_0   = E(x) * s                              the scan's latent, scaled to unit variance
    c_p   = Enc(z_0)                              (section 3: "the test image itself")
    z_T   = q(z_{T_int} | z_0),  T_int = 250       the forward process (seeded)
    z_0^T = ancestral DDPM steps T_int -> 0 with eps_theta(z_t, c_p, t) and Sigma_theta
            (`respacing` k: every k-th level, improved DDPM's respacing; `ancestral` 0: DDIM;
            `samples` n: n chains from independent noise, their z_0^T averaged; by default
            4 chains of every 5th level, the paper's is one chain of every level)
    x_0^T = D(z_0^T / s)                           the pseudo-healthy image
    m     = cd(min over shifts |d| <= 2 of |r - x_0^T(. + d)| * LPIPS(r, x_0^T))      (eq. 8)
            r = D(E(x)) by default; r = x_0 in the paper (`against_reconstruction` 0)

cd: a 5^3 median filter and the brain mask eroded 3 times (the paper erodes 6 times at about
1 mm; the grid here is 2 mm). The LPIPS factor is a whole-image scalar from AlexNet features;
the bundle records whether its backbone weights were present when it was calibrated
(`lpips`), and the map is the residual alone where they were not (every report says which,
through the bundle's `anomaly_maps`). The paper min-max normalises each map to [0, 1]; that
is `minmax` here, off by default, because one healthy-calibrated threshold needs maps that
compare across scans. The map compares x_0^T with the autoencoder's own reconstruction
D(E(x)) rather than with x (as MAD-AD does), which cancels the first stage's error: with the
bundled first stage (healthy MAE 0.068), even a perfect latent model mapped against x reaches
a synthetic-lesion AP of 0.30, against D(E(x)) 0.77 (benchmarks/first_stage_bounds.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..diffusion import GaussianDiffusion
from ..diffusion.inpainting import reconstruct
from ..models.weights import load_weights
from ..networks.autoencoder import decode_image, encode_image, load_autoencoder
from ..networks.conditioned_unet import ConditionedUNetConfig, EncoderConditionedNetwork
from ..postprocessing import filtered_in_eroded_brain
from ..progress import StepCallback
from ..subject import UNKNOWN, Subject
from .base import recorded_inference

AUTOENCODER_FOLDER, NETWORK_FOLDER, WEIGHTS_STEM = "autoencoder", "network", "cond_ldm"


@dataclass(frozen=True)
class CondLDMSettings:
    """Inference knobs with the paper's defaults but for the chain: 4 respaced chains
    averaged, not one full chain (registry.COND_LDM_OPTIONS mirrors them; README figures)."""

    t_int: int = 250  # the noise level the scan is encoded to
    respacing: int = 5  # k: every k-th level of the chain (1: every step, the paper)
    ancestral: int = 1  # 1: ancestral DDPM steps (respaced when k > 1); 0: deterministic DDIM
    samples: int = 4  # chains from independent noise, their latents averaged (1: the paper)
    max_shift: int = 2  # voxels each way of eq. 8's alignment
    median_size: int = 5
    gaussian_sigma: float = 0.0  # a Gaussian after the median (voxels); 0: none, the paper's
    erosion: int = 3
    minmax: int = 0  # 1: min-max normalise each map to [0, 1] (the paper)
    against_reconstruction: int = 1  # 0: compare with x (the paper), 1: with D(E(x))
    seed: int = 42
    lpips: bool = False  # set by the bundle: AlexNet weights were present at calibration


def shift_aligned_residual(image: np.ndarray, healthy: np.ndarray, max_shift: int
                           ) -> np.ndarray:
    """Eq. 8's alignment: per voxel, the smallest |image - healthy shifted by d| over the
    shifts d with every component in [-max_shift, max_shift] (edges replicated)."""
    if max_shift == 0:
        return np.abs(image - healthy).astype(np.float32)
    padded = np.pad(healthy.astype(np.float32), max_shift, mode="edge")
    shape, best = image.shape, None
    span = range(2 * max_shift + 1)
    for dz in span:
        for dy in span:
            for dx in span:
                moved = padded[dz:dz + shape[0], dy:dy + shape[1], dx:dx + shape[2]]
                residual = np.abs(image - moved)
                best = residual if best is None else np.minimum(best, residual, out=best)
    return best.astype(np.float32)


def map_formula(settings: CondLDMSettings) -> str:
    """Eq. 8's map as `settings` compute it, for the bundle's manifest and every report."""
    reference = "D(E(x))" if settings.against_reconstruction else "x"
    residual = f"min over shifts |d| <= {settings.max_shift} of |{reference} - x_hat(. + d)|"
    if settings.median_size > 1:
        residual = f"median{settings.median_size}({residual})"
    if settings.gaussian_sigma > 0:
        residual = f"gaussian{settings.gaussian_sigma:g}({residual})"
    times = "once" if settings.erosion == 1 else f"{settings.erosion} times"
    return f"{residual} in the brain eroded {times} (eq. 8)"


@dataclass
class CondLDMModel:
    """The frozen first stage, the conditioned network, their diffusion process and scale."""

    autoencoder: torch.nn.Module
    network: EncoderConditionedNetwork
    diffusion: GaussianDiffusion
    latent_scale: float
    settings: CondLDMSettings
    device: str = "cpu"

    @property
    def map_formula(self) -> str:
        return map_formula(self.settings)

    def to(self, device: str) -> CondLDMModel:
        self.autoencoder.to(device)
        self.network.to(device)
        self.device = device
        return self

    def encode(self, image: np.ndarray) -> torch.Tensor:
        return encode_image(self.autoencoder, image, self.latent_scale, self.device)

    def decode(self, latent: torch.Tensor) -> np.ndarray:
        return decode_image(self.autoencoder, latent, self.latent_scale)

    @torch.no_grad()
    def healthy_latent(self, z0: torch.Tensor, on_step: StepCallback | None = None
                       ) -> torch.Tensor:
        """z_0^T: z_0 noised to T_int and denoised, conditioned on c_p = Enc(z_0)."""
        code = self.network.encoder(z0)

        def denoiser(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.network.unet(z, t, code.expand(len(z), -1))

        return reconstruct(self.diffusion, denoiser, z0,
                           [self.settings.t_int] * self.settings.samples,
                           self.settings.respacing, self.settings.seed, on_step,
                           ancestral=bool(self.settings.ancestral))

    def predict(self, image: np.ndarray, brain: np.ndarray, subject: Subject = UNKNOWN,
                on_step: StepCallback | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(eq. 8's map, the pseudo-healthy image); the subject's covariates are not used."""
        brain = np.asarray(brain) > 0
        z0 = self.encode(image)
        healthy = self.decode(self.healthy_latent(z0, on_step)) * brain
        reference = (self.decode(z0) * brain if self.settings.against_reconstruction
                     else image)
        residual = shift_aligned_residual(reference, healthy, self.settings.max_shift)
        if self.settings.lpips:
            residual = residual * perceptual_distance(reference, healthy, brain)
        residual = filtered_in_eroded_brain(residual * brain, brain, self.settings.median_size,
                                            self.settings.erosion, self.settings.gaussian_sigma)
        if self.settings.minmax:
            inside = residual[brain]
            low, high = float(inside.min()), float(inside.max())
            residual = (residual - low) / max(high - low, 1e-12) * brain
        return residual.astype(np.float32), healthy.astype(np.float32)


def perceptual_distance(image: np.ndarray, healthy: np.ndarray, brain: np.ndarray) -> float:
    """LPIPS-AlexNet between the scan and its pseudo-healthy image (eq. 8's whole-image
    factor), over the slices of the three axes that touch the brain."""
    from ..evaluation.lpips import lpips_2p5d, lpips_model

    return lpips_2p5d(image, healthy, lpips_model("alex"), brain)


def load_cond_ldm(folder: str | Path, name: str = "cond_ldm", options: dict | None = None
                  ) -> CondLDMModel:
    """The registry's loader: the bundle's autoencoder/ and network/ (built from the configs
    and diffusion process their manifests record), with the bundle's inference settings and
    `options` over them."""
    folder = Path(folder)
    bundle = json.loads((folder / "manifest.json").read_text())
    autoencoder, _ = load_autoencoder(folder / AUTOENCODER_FOLDER)
    manifest = json.loads((folder / NETWORK_FOLDER / "manifest.json").read_text())
    network = EncoderConditionedNetwork(ConditionedUNetConfig.from_dict(manifest["config"]))
    network.load_state_dict(load_weights(folder / NETWORK_FOLDER, WEIGHTS_STEM))
    recorded = recorded_inference(bundle.get("inference", {}), name)
    settings = CondLDMSettings(**{**recorded, **(options or {})})
    return CondLDMModel(autoencoder, network.eval(),
                        GaussianDiffusion.from_dict(manifest["diffusion"]),
                        float(manifest["latent_scale"]), settings)

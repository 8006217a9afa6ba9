"""CADD (context-aware disease deviations) and the baselines and ablations of its tables, all
from one trained pair (first-stage autoencoder + Latte latent DDPM) and one bundle.

    cadd            Algorithm 1: KL-guided inpainting, conditioned on age and sex
    cadd_nocov      the same without covariates (ablation)
    cadd_noinpaint  denoise from every level with covariates, average, no masks (ablation)
    ldm             reconstruct from T_int without inpainting or covariates (LDM baseline)
    ldm_tavg        average of reconstructions from every level (LDM T_avg baseline)

The anomaly map is the voxel-wise absolute error |D(E(x)) - x^| inside the brain, x^ the
decoded pseudo-healthy image and D(E(x)) the autoencoder's own reconstruction of the scan (as
MAD-AD's map), which cancels the first stage's reconstruction error; `against_reconstruction`
0 gives the paper's |x - x^|. `gaussian_sigma` smooths it (the paper: none), `erosion` drops
the brain's rim. Each variant carries its own healthy calibration.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..diffusion import GaussianDiffusion
from ..diffusion.inpainting import (
    InpaintingSettings,
    kl_guided_inpainting,
    kl_maps,
    reconstruct,
)
from ..errors import ModelError, UsageError
from ..models.weights import load_weights
from ..networks.autoencoder import decode_image, encode_image, load_autoencoder
from ..networks.latte import TRANSFORMER_WEIGHTS, LatteConfig, LatteTransformer
from ..postprocessing.filters import filtered_in_eroded_brain
from ..progress import StepCallback
from ..subject import UNKNOWN, Subject
from .base import recorded_inference
from .kl_table import LEVELS_KEY, as_stored, load_percentiles


@dataclass(frozen=True)
class Variant:
    inpaint: bool
    covariates: bool
    all_levels: bool = True


VARIANTS = {
    "cadd": Variant(inpaint=True, covariates=True),
    "cadd_nocov": Variant(inpaint=True, covariates=False),
    "cadd_noinpaint": Variant(inpaint=False, covariates=True),
    "ldm": Variant(inpaint=False, covariates=False, all_levels=False),
    "ldm_tavg": Variant(inpaint=False, covariates=False),
}


@dataclass(frozen=True)
class CADDSettings(InpaintingSettings):
    """Algorithm 1's knobs and the map's (registry.CADD_OPTIONS mirrors them)."""

    # 1: |D(E(x)) - x^|, against the first stage's own reconstruction, which cancels its
    # error (measured better, see the README's *CADD*); 0: |x - x^| (the paper)
    against_reconstruction: int = 1
    gaussian_sigma: float = 0.0  # a Gaussian over the map (voxels); 0: none, the paper's
    erosion: int = 0  # brain-mask erosions before scoring; 0: the whole brain, the paper's


@dataclass
class CADDModel:
    autoencoder: torch.nn.Module
    transformer: LatteTransformer
    latent_scale: float
    settings: CADDSettings
    variant: Variant
    cohort_percentiles: dict[str, torch.Tensor]  # "covariates"/"none", and LEVELS_KEY
    diffusion: GaussianDiffusion
    device: str = "cpu"

    def cohort_percentiles_at_levels(self) -> torch.Tensor | None:
        """The healthy cohort's KL percentiles at this run's levels U (rows of the stored
        table, which covers every level_step up to T), or None where the bundle has none."""
        key = "covariates" if self.variant.covariates else "none"
        if key not in self.cohort_percentiles:
            return None
        stored = self.cohort_percentiles[LEVELS_KEY].tolist()
        missing = sorted(set(self.settings.levels) - set(stored))
        if missing:
            raise UsageError(
                f"This CADD bundle has healthy KL percentiles at noise levels {stored[0]}, "
                f"{stored[1]}, ..., {stored[-1]}, not at {missing[0]}: choose t_int and "
                f"level_step among those levels (level_step a multiple of {stored[0]}).")
        rows = torch.tensor([stored.index(level) for level in self.settings.levels])
        return self.cohort_percentiles[key][rows.to(self.cohort_percentiles[key].device)]

    def to(self, device: str) -> CADDModel:
        self.autoencoder.to(device)
        self.transformer.to(device)
        self.cohort_percentiles = {k: v.to(device) for k, v in self.cohort_percentiles.items()}
        self.device = device
        return self

    def denoiser(self, subject: Subject):
        """The network with this subject's covariates bound (or none, for the variants
        without covariates and where the age or sex is unknown)."""
        age, sex = subject.age, subject.sex
        use = self.variant.covariates and age is not None and sex is not None

        def model(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            n, device = len(t), z.device
            with torch.no_grad():
                if not use:
                    return self.transformer(z, t)
                return self.transformer(z, t, torch.full((n,), float(age), device=device),
                                        torch.full((n,), 1.0 if sex == "F" else -1.0,
                                                   device=device))
        return model

    def encode(self, image: np.ndarray) -> torch.Tensor:
        return encode_image(self.autoencoder, image, self.latent_scale, self.device)

    def decode(self, latent: torch.Tensor, brain: np.ndarray) -> np.ndarray:
        return (decode_image(self.autoencoder, latent, self.latent_scale) * brain
                ).astype(np.float32)

    def pseudo_healthy(self, image: np.ndarray, brain: np.ndarray, subject: Subject = UNKNOWN,
                       on_step: StepCallback | None = None) -> np.ndarray:
        return self.decode(self.healthy_latent(self.encode(image), subject, on_step), brain)

    @torch.no_grad()
    def healthy_latent(self, z0: torch.Tensor, subject: Subject = UNKNOWN,
                       on_step: StepCallback | None = None) -> torch.Tensor:
        """The pseudo-healthy latent of the scan's latent z0 (Algorithm 1, or the baselines)."""
        model = self.denoiser(subject)
        levels = self.settings.levels if self.variant.all_levels else [self.settings.t_int]
        if self.variant.inpaint:
            return kl_guided_inpainting(self.diffusion, model, z0, self.settings,
                                        self.cohort_percentiles_at_levels(), on_step)["latent"]
        return reconstruct(self.diffusion, model, z0, levels, self.settings.respacing,
                           self.settings.seed, on_step)

    def predict(self, image: np.ndarray, brain: np.ndarray, subject: Subject = UNKNOWN,
                on_step: StepCallback | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(|D(E(x)) - x^| inside the brain, x^), or |x - x^| with `against_reconstruction`
        0, smoothed and eroded as the settings say; `on_step` hears of every sampling step."""
        z0 = self.encode(image)
        healthy = self.decode(self.healthy_latent(z0, subject, on_step), brain)
        reference = (self.decode(z0, brain) if self.settings.against_reconstruction
                     else image)
        residual = filtered_in_eroded_brain(np.abs(reference - healthy) * brain, brain, 1,
                                            self.settings.erosion, self.settings.gaussian_sigma)
        return residual, healthy


def cohort_kl_percentiles(model: CADDModel, latents: list[torch.Tensor],
                          subjects: list[Subject]) -> dict[str, torch.Tensor]:
    """KL_{P95}^{val}(U): per level and latent position, the percentile (the model's
    `settings.percentile`) of KL_U over healthy validation latents, with covariates
    ("covariates") and without ("none"), at every level_step up to T, so that any T_int up to
    the full chain finds its rows (the authors' code lacks this function; derived from the
    paper). At the precision it is stored at (`kl_table`)."""
    settings = replace(model.settings, t_int=model.diffusion.num_timesteps)
    table = {LEVELS_KEY: torch.tensor(settings.levels)}
    for key, variant in (("covariates", "cadd"), ("none", "cadd_nocov")):
        denoiser = replace(model, variant=VARIANTS[variant]).denoiser
        maps = torch.stack([kl_maps(model.diffusion, denoiser(subject), z0, settings)
                            for z0, subject in zip(latents, subjects, strict=True)])
        table[key] = torch.quantile(maps, settings.percentile / 100.0, dim=0).contiguous()
    return as_stored(table)


def load_cadd(folder: str | Path, variant: str, options: dict | None = None) -> CADDModel:
    """A CADD variant from its bundle folder (autoencoder/, transformer/, kl percentiles), with
    the inference settings the bundle records overridden by `options` (the registry's loader
    of the cadd family)."""
    folder = Path(folder)
    autoencoder, _ = load_autoencoder(folder / "autoencoder")
    manifest = json.loads((folder / "transformer" / "manifest.json").read_text())
    config = LatteConfig(**{k: tuple(v) if isinstance(v, list) else v
                            for k, v in manifest["config"].items()})
    transformer = LatteTransformer(config)
    transformer.load_state_dict(load_weights(folder / "transformer", TRANSFORMER_WEIGHTS))
    percentiles = load_percentiles(folder)
    bundle = json.loads((folder / "manifest.json").read_text()) if (
        folder / "manifest.json").is_file() else {}
    settings = CADDSettings(**{**recorded_inference(bundle.get("inference", {}), variant),
                               **(options or {})})
    if "diffusion" not in manifest:
        raise ModelError(f"{folder / 'transformer' / 'manifest.json'} does not record its "
                         "diffusion process (schedule, steps, betas): retrain the transformer "
                         "with this version of NeuroAD.")
    return CADDModel(autoencoder, transformer.eval(), float(manifest["latent_scale"]),
                     settings, VARIANTS[variant], percentiles,
                     GaussianDiffusion.from_dict(manifest["diffusion"]))


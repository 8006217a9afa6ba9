"""SDM and FAM: the single-visit half of the longitudinal method (the longitudinal report,
sections 3.1-3.2.1), on the axial slices of the 2 mm grid.

SDM reconstructs a slice with a DDIM whose UNet is conditioned through AdaGN on a semantic code
of the slice itself (eq. 3.1-3.2):
    y_sem = Enc(x)                                       the semantic code
    x_t   = DDIM inversion of x to level t = 250          the stochastic code x_t^infer
            (or the forward process's noise, x_t^semantic, as an option)
    x_hat = deterministic DDIM decoding of x_t, conditioned on y_sem
    D_p   = |x - x_hat|                                   the pixel distance (eq. 3.3)
FAM adds a feature distance from a fine-tuned copy Phi of the encoder (eq. 3.4-3.5):
    D_f   = sum over stages j in {2, 3} of Interp(1 - cos(Phi_j(x), Phi_j(x_hat)))
    s     = v D_p + D_f max(D_p) / max(D_f)               maxima over the scan's brain,
                                                          eroded as below (an option)
then, on the volume: a 5^3 median filter and the brain mask eroded 3 times.

The report takes eq. 3.5's maxima over each image. Here they are per scan, and by default over
the brain eroded as the post-processing erodes it (`scale_in_eroded_brain`): under clinical
acquisitions the brain's outer rim is bright, D_p there is 4-5x healthy, and a scale set at the
rim made `sdm_fam` flag 5% of healthy brains of such acquisitions (measured in
benchmarks/sdm_fam_acquisitions.py; README, *Longitudinal*).

Images enter the network on [-1, 1] (2 x - 1 of the grid's [0, 1] intensities). The report
decodes with 100 DDIM steps; the default here is 10 each way, for 2 CPU cores (`steps`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..diffusion.process import DiffusionConfig, DiffusionProcess
from ..models.weights import load_weights
from ..networks.conditioned_unet import (
    ConditionedUNetConfig,
    EncoderConditionedNetwork,
    build_encoder,
    resnet_features,
)
from ..postprocessing import erode_brain_mask, filtered_in_eroded_brain
from ..postprocessing.temporal import LAFMSettings
from ..progress import StepCallback
from ..slices import map_slices, slice_batch_size
from ..subject import UNKNOWN, Subject
from .base import recorded_inference
from .image_ddpm import SliceNoise, chain_levels, from_network, steps_of, to_network

NETWORK_FOLDER, WEIGHTS_STEM = "network", "sdm"
FAM_FOLDER, FAM_STEM = "fam", "feature_extractor"
ENCODINGS = ("inversion", "noise")
FEATURE_STAGES = (2, 3)  # J, the middle ResNet stages (section 3.2.1)


@dataclass(frozen=True)
class SDMSettings:
    """Inference knobs with the report's defaults, but for the step count (10, not 100)."""

    noise_level: int = 250  # the level the scan is encoded to (the report's best trade-off)
    steps: int = 10  # DDIM steps each way; the report decodes with 100
    encoding: str = "inversion"  # "inversion": x_t^infer; "noise": x_t^semantic
    pixel_weight: float = 1.0  # v of eq. 3.5
    median_size: int = 5  # median filter side (voxels); 1: none
    erosion: int = 3  # brain-mask erosions before scoring
    scale_in_eroded_brain: int = 1  # eq. 3.5's maxima: 1, over the eroded brain; 0, the brain
    seed: int = 42  # the forward noise of the "noise" encoding
    lafm_sigma: float = 2.5  # the longitudinal method's LAFM (eq. 3.7-3.8), years
    lafm_beta: float = 1.0
    lafm_gamma: float = 0.1
    impute_every: float = 0.0  # the longitudinal method's TDM imputation (years; 0: off)

    def lafm(self) -> LAFMSettings:
        return LAFMSettings(self.lafm_sigma, self.lafm_beta, self.lafm_gamma)

    def levels(self) -> list[int]:
        """The decoding chain's levels, noise_level down to 0."""
        return chain_levels(self.noise_level, max(1, self.noise_level // self.steps))


def sdm_diffusion() -> DiffusionConfig:
    """T = 1000, linear betas 1e-4 -> 0.02, epsilon prediction (Table 4.1)."""
    return DiffusionConfig(num_timesteps=1000, schedule="linear", beta_start=1e-4,
                           beta_end=2e-2, prediction_type="epsilon")


def feature_distance(extractor: nn.Module, x: torch.Tensor, x_hat: torch.Tensor
                     ) -> torch.Tensor:
    """D_f (eq. 3.4): the per-pixel 1 - cosine similarity of the extractor's features of x
    and x_hat at the FAM stages, each upsampled to the slice's size, summed: (n, 1, y, x)."""
    total = torch.zeros_like(x)
    for a, b in zip(resnet_features(extractor, x, FEATURE_STAGES),
                    resnet_features(extractor, x_hat, FEATURE_STAGES), strict=True):
        distance = 1.0 - nn.functional.cosine_similarity(a, b, dim=1)[:, None]
        total += nn.functional.interpolate(distance, size=x.shape[2:], mode="bilinear",
                                           align_corners=False)
    return total


def fam_score(pixel: np.ndarray, feature: np.ndarray, brain: np.ndarray,
              pixel_weight: float, maxima_in: np.ndarray | None = None) -> np.ndarray:
    """s = v D_p + D_f max(D_p) / max(D_f) (eq. 3.5) in the brain, the maxima over
    `maxima_in` (default: the brain)."""
    inside = brain > 0
    region = inside if maxima_in is None else maxima_in > 0
    top_feature = float(feature[region].max()) if region.any() else 0.0
    scale = float(pixel[region].max()) / top_feature if top_feature > 0 else 0.0
    return ((pixel_weight * pixel + scale * feature) * inside).astype(np.float32)


@dataclass
class SDMScores:
    """One scan's unfiltered maps: the pixel distance D_p, the FAM score s (None without
    FAM), the pseudo-healthy image and the feature distance D_f (None without FAM), all on
    the grid."""

    pixel: np.ndarray
    fam: np.ndarray | None
    healthy: np.ndarray
    feature: np.ndarray | None = None


@dataclass
class SDMModel:
    """SDM's network and diffusion process, and FAM's fine-tuned feature extractor (None:
    the map is D_p alone, the `sdm` ablation)."""

    network: EncoderConditionedNetwork
    diffusion: DiffusionProcess
    settings: SDMSettings
    extractor: nn.Module | None = None
    batch_size: int = 0  # slices per batch; 0: chosen for memory
    device: str = "cpu"

    def to(self, device: str) -> SDMModel:
        self.network.to(device)
        if self.extractor is not None:
            self.extractor.to(device)
        self.device = device
        return self

    def _estimate(self, z: torch.Tensor, t: int, code: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        level = torch.full((len(z),), t, device=z.device)
        return self.diffusion.x0_and_eps(self.network.unet(z, level, code), z, level)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, code: torch.Tensor, slices: np.ndarray,
               noise: SliceNoise) -> torch.Tensor:
        """x (on [-1, 1]) at the chain's top level: by deterministic DDIM inversion (the
        reverse ODE, eq. 2.14), or by the forward process's Gaussian noise."""
        levels = self.settings.levels()
        if self.settings.encoding == "noise":
            eps = noise.initial(slices, tuple(x.shape[2:]), levels[0]).to(x.device)
            return self.diffusion.q_sample(x, torch.tensor([levels[0]]), eps)
        z = x
        ascending = levels[::-1]
        for t, t_next in zip(ascending[:-1], ascending[1:], strict=True):
            x0, eps = self._estimate(z, t, code)
            # eq. 2.14: x_next = sqrt(abar_next) x0_hat + sqrt(1 - abar_next) eps_hat
            z = self.diffusion.q_sample(x0, torch.tensor([t_next]), eps)
        return z

    @torch.no_grad()
    def reconstruct(self, x0: torch.Tensor, slices: np.ndarray, noise: SliceNoise
                    ) -> torch.Tensor:
        """x_hat of slices x0 (n, 1, y, x) on [0, 1]: encode, then decode with DDIM (eta 0)
        conditioned on y_sem = Enc(x)."""
        x = to_network(x0)
        code = self.network.encoder(x)
        z = self.encode(x, code, slices, noise)
        for t, t_prev in steps_of(self.settings.levels()):
            estimate, eps = self._estimate(z, t, code)
            z = self.diffusion.ddim_step(estimate, eps, t, t_prev, 0.0)
        return from_network(z.clamp(-1.0, 1.0))

    def scores(self, image: np.ndarray, brain: np.ndarray,
               on_step: StepCallback | None = None) -> SDMScores:
        """D_p, the FAM score (when the model has FAM) and x_hat over the brain slices."""
        multiple = self.network.config.size_multiple
        if image.shape[1] % multiple or image.shape[2] % multiple:
            raise ValueError(f"SDM needs axial slices whose sides are multiples of "
                             f"{multiple}, not {image.shape[1:]}")
        healthy = (image * brain).astype(np.float32)
        feature = np.zeros(image.shape, np.float32)
        noise = SliceNoise(self.settings.seed)

        def process(slices: np.ndarray, masks: np.ndarray, batch: np.ndarray) -> np.ndarray:
            x0 = torch.from_numpy(slices[:, None].astype(np.float32)).to(self.device)
            x_hat = self.reconstruct(x0, batch, noise)
            healthy[batch] = x_hat[:, 0].cpu().numpy() * masks
            if self.extractor is not None:
                with torch.no_grad():
                    distance = feature_distance(self.extractor, to_network(x0),
                                                to_network(x_hat))
                feature[batch] = distance[:, 0].cpu().numpy() * masks
            return np.abs(slices - healthy[batch]) * masks

        batch_size = self.batch_size or slice_batch_size(image.shape[1:])
        pixel = map_slices(image, brain, process, batch_size, on_step)
        if self.extractor is None:
            return SDMScores(pixel, None, healthy)
        return SDMScores(pixel, fam_score(pixel, feature, brain, self.settings.pixel_weight,
                                          self.scale_region(brain)), healthy, feature)

    def scale_region(self, brain: np.ndarray) -> np.ndarray:
        """Where eq. 3.5 takes its maxima: the brain, eroded as the post-processing erodes it
        when `scale_in_eroded_brain` (and left whole when that erodes it away)."""
        region = np.asarray(brain) > 0
        if self.settings.scale_in_eroded_brain:
            eroded = erode_brain_mask(region, self.settings.erosion)
            if eroded.any():
                return eroded
        return region

    def postprocess(self, volume: np.ndarray, brain: np.ndarray) -> np.ndarray:
        return filtered_in_eroded_brain(volume, brain, self.settings.median_size,
                                        self.settings.erosion)

    def predict(self, image: np.ndarray, brain: np.ndarray, subject: Subject = UNKNOWN,
                on_step: StepCallback | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(post-processed map, pseudo-healthy image): the FAM score, or D_p without FAM.
        SDM has no covariates: `subject` is not used."""
        scores = self.scores(image, brain, on_step)
        raw = scores.fam if scores.fam is not None else scores.pixel
        return self.postprocess(raw, brain), scores.healthy


def load_sdm(folder: str | Path, name: str = "sdm", options: dict | None = None) -> SDMModel:
    """SDM from its bundle: network/ (weights, config, diffusion process), FAM's fine-tuned
    extractor fam/ for every method but the `sdm` ablation, and the manifest's inference
    settings."""
    folder = Path(folder)
    bundle = json.loads((folder / "manifest.json").read_text())
    manifest = json.loads((folder / NETWORK_FOLDER / "manifest.json").read_text())
    config = ConditionedUNetConfig.from_dict(manifest["config"])
    network = EncoderConditionedNetwork(config)
    network.load_state_dict(load_weights(folder / NETWORK_FOLDER, WEIGHTS_STEM))
    settings = SDMSettings(**{**recorded_inference(bundle.get("inference", {}), name),
                              **(options or {})})
    if settings.encoding not in ENCODINGS:
        raise ValueError(f"Unknown SDM encoding {settings.encoding!r}; encodings: "
                         f"{', '.join(ENCODINGS)}.")
    extractor = None
    if name != "sdm":
        extractor = build_encoder(config)
        extractor.load_state_dict(load_weights(folder / FAM_FOLDER, FAM_STEM))
        extractor.eval()
    return SDMModel(network.eval(), DiffusionProcess(DiffusionConfig(**manifest["diffusion"])),
                    settings, extractor)

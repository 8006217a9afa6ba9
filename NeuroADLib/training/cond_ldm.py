"""Training the pathology-conditioned LDM (`cond_ldm`) on a prepared healthy cohort, in one
resumable command:

1. the cohort's training scans harmonised to its intensity standard, with acquisition-augmented
   copies (training/slice_data.py's `prepare_slices`, whose volumes are used whole);
2. the training pairs (training/pathology_pairs.py): each scan's latent from the frozen first
   stage and `versions` latents of copies with fluid-driven pseudo-pathologies;
3. Enc and the AdaGN UNet end to end (eq. 7 with learned variance, the hybrid loss of eq. 1):
   t ~ U{0, ..., T-1}, the healthy latent noised by the forward process, the condition a
   pseudo-pathological version in `anomaly_fraction` of samples (the paper: 80%) and the
   healthy latent itself otherwise; T = 1000, linear beta 0.0015-0.0195, Adam 1e-4;
4. the bundle: the first stage (copied), the network, the intensity standard, the healthy
   calibration on the harmonised validation split, and the manifest.

Not done as the paper: 3 pseudo-pathological versions per scan by default, not 8 (encoding
takes about 2.6 s per volume on one core); Perlin initial shapes only (see
pathology_pairs.py); a fixed step count, not early stopping on a validation loss; Enc is a
small 3D ResNet with a linear head to d = 64 (the paper: the UNet's encoder, d = 1280).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..diffusion import GaussianDiffusion, hybrid_loss
from ..hashing import sha256
from ..methods.cond_ldm import (
    AUTOENCODER_FOLDER,
    NETWORK_FOLDER,
    WEIGHTS_STEM,
    CondLDMSettings,
    load_cond_ldm,
    map_formula,
)
from ..networks.autoencoder import load_autoencoder
from ..networks.conditioned_unet import ConditionedUNetConfig, EncoderConditionedNetwork
from .loop import LoopSettings, run_training
from .pathology_pairs import PAIRS_FILE, PairSettings, cached_pairs, encode_pairs, pairs_key
from .provenance import CHECKPOINT, save_network
from .slice_data import (
    SliceTrainingRun,
    TrainingLog,
    calibrate_on_validation,
    prepare_slices,
    write_slice_bundle_manifest,
)


def _latent_unet(**fields) -> ConditionedUNetConfig:
    """A 3D AdaGN UNet over latents of 3 channels, predicting eps and the variance (2 x 3);
    training sets the channels to those of its first stage's latents."""
    return ConditionedUNetConfig(conditioning="adagn", spatial_dims=3, in_channels=3,
                                 out_channels=6, **fields)


COND_LDM_CONFIGS = {
    # About 0.7 s per batch of 8 latents (3 x 24 x 28 x 24) on one CPU core, 1.8 M parameters.
    "default": _latent_unet(channels=(16, 32, 64), condition_dim=64,
                            encoder_channels=(16, 32, 64, 64)),
    # The paper's UNet: channels (128, 256, 256), one residual block per level, attention at the
    # deepest level; for a GPU.
    "paper": _latent_unet(channels=(128, 256, 256), attention_at_deepest_level=True,
                          condition_dim=256, encoder_channels=(64, 128, 256, 256),
                          norm_num_groups=32),
    "tiny": _latent_unet(channels=(8, 8), condition_dim=8, encoder_channels=(4, 4, 4, 4),
                         norm_num_groups=4),
}


@dataclass(frozen=True)
class CondLDMTraining(SliceTrainingRun):
    config: str = "default"
    steps: int = 5000  # about an hour on one CPU core at the default size
    batch_size: int = 8
    learning_rate: float = 1e-4  # Adam (the paper)
    anomaly_fraction: float = 0.8  # samples whose condition carries pseudo-pathologies
    vlb_weight: float = 1e-3  # the hybrid loss's weight of the bound (improved DDPM)
    pairs: PairSettings = field(default_factory=PairSettings)
    inference: CondLDMSettings = field(default_factory=CondLDMSettings)


def lpips_available() -> bool:
    """Whether LPIPS-AlexNet can run here (the lpips package and its backbone weights)."""
    from ..evaluation.lpips import MetricUnavailable, lpips_model

    try:
        lpips_model("alex")
    except (MetricUnavailable, ImportError, OSError):
        return False
    return True


def train_cond_ldm(cohort_dir: str | os.PathLike, autoencoder_dir: str | os.PathLike,
                   out: str | os.PathLike, training: CondLDMTraining | None = None,
                   device: str = "cpu", log=print) -> Path:
    """Train (or resume) the conditioned LDM on the first stage in `autoencoder_dir` and
    write the calibrated bundle to `out`."""
    training = training or CondLDMTraining()
    cohort, out = Path(cohort_dir), Path(out)
    record = TrainingLog(log)
    data = prepare_slices(cohort, training.acquisition_copies, training.seed, record)
    autoencoder, _ = load_autoencoder(autoencoder_dir)
    autoencoder_sha256 = sha256(Path(autoencoder_dir) / "autoencoder.safetensors")
    key = pairs_key(autoencoder_sha256, data.train_subjects, training.pairs,
                    training.acquisition_copies)
    pairs = cached_pairs(out / NETWORK_FOLDER / CHECKPOINT / PAIRS_FILE, key,
                         lambda: encode_pairs(autoencoder.to(device), data.slices.images,
                                              data.slices.masks, training.pairs, device,
                                              record))
    scale = float(1.0 / pairs.healthy.std())
    pairs = pairs.scaled(scale)
    record(f"{len(pairs.healthy)} healthy latents {tuple(pairs.healthy.shape[1:])} with "
           f"{pairs.pathological.shape[1]} pseudo-pathological versions each; scale {scale:.4f}")

    torch.manual_seed(training.seed)
    channels = pairs.healthy.shape[1]  # the first stage's latent channels
    config = replace(COND_LDM_CONFIGS[training.config], in_channels=channels,
                     out_channels=2 * channels)
    network = EncoderConditionedNetwork(config).to(device)
    diffusion = GaussianDiffusion()
    optimiser = torch.optim.Adam(network.parameters(), lr=training.learning_rate)
    pairs = pairs.to(device)

    def step(number: int, rng: np.random.Generator, generator: torch.Generator) -> dict:
        n = training.batch_size
        rows = torch.randint(len(pairs.healthy), (n,), generator=generator)
        versions = torch.randint(pairs.pathological.shape[1], (n,), generator=generator)
        anomalous = torch.rand(n, generator=generator) < training.anomaly_fraction
        t = torch.randint(diffusion.num_timesteps, (n,), generator=generator)
        noise = torch.randn((n, *pairs.healthy.shape[1:]), generator=generator).to(device)
        rows, versions, anomalous, t = (v.to(device) for v in (rows, versions, anomalous, t))
        z0, condition = pairs.batch(rows, versions, anomalous)
        zt = diffusion.q_sample(z0, t, noise)
        loss = hybrid_loss(diffusion, network(zt, t, condition), z0, zt, t, noise,
                           training.vlb_weight)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        return {"loss": loss.item()}

    run_training(out / NETWORK_FOLDER, {"cond_ldm": network}, {"adam": optimiser}, step,
                 LoopSettings(training.steps, training.seed, training.checkpoint_every,
                              training.log_every), record)
    recorded = {k: v for k, v in asdict(training).items() if k != "inference"}
    save_network(out / NETWORK_FOLDER, network.eval(), WEIGHTS_STEM,
                 id=f"cond-ldm-network-{training.config}-ixi-2mm", method="cond-ldm-network",
                 diffusion=diffusion.to_dict(), latent_scale=scale, training=recorded,
                 autoencoder={"sha256": autoencoder_sha256})
    target = out / AUTOENCODER_FOLDER
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(autoencoder_dir, target, ignore=shutil.ignore_patterns(CHECKPOINT))

    lpips = lpips_available()
    settings = CondLDMSettings(**{**asdict(training.inference), "lpips": lpips})
    (out / "manifest.json").write_text(json.dumps({"inference": asdict(settings)}))
    data.standard.save(out)
    validated = calibrate_on_validation(load_cond_ldm(out).to(device), data.validation, out,
                                        "calibration_cond_ldm")
    record(f"cond_ldm: {validated.describe()}")
    write_slice_bundle_manifest(
        out, id="cond-ldm-ixi-2mm", method="cond_ldm",
        description="The pathology-conditioned LDM: a 3D latent DDPM conditioned through "
                    "AdaGN on an encoding of a pseudo-pathological latent, trained on healthy "
                    "IXI subjects (harmonised, with acquisition-augmented copies) and copies "
                    "of them with fluid-driven Perlin lesions, in the latent space of CADD's "
                    "first stage; at inference the condition is the scan itself.",
        training=training, settings=settings, device=device, data=data, cohort=cohort,
        validated=validated, record=record,
        anomaly_maps={"cond_ldm": {
            "formula": map_formula(settings),
            "lpips": ("LPIPS-AlexNet whole-image factor applied" if lpips else
                      "not used: no AlexNet backbone weights were present when the bundle "
                      "was calibrated, so the map is the aligned residual alone")}})
    return out

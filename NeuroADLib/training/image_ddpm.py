"""Training the unconditional 2D DDPM that THOR and AutoDDPM share, in one resumable command:

1. the cohort's training scans harmonised to its intensity standard, with acquisition-augmented
   copies (training/slice_data.py);
2. the UNet on random axial brain slices on [-1, 1]: t ~ U{0, ..., T-1}, x_t from the forward
   process (Ho et al. 2020 eq. 4) with Gaussian (or simplex) noise, loss ||eps - eps_theta||^2
   (Ho et al. eq. 14, L_simple), left-right flips;
3. the bundle: the network, the intensity standard, AutoDDPM's mask threshold (at most 5% of
   healthy validation brain pixels above it) and the healthy calibrations of both methods on
   the harmonised validation split.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..diffusion.process import DiffusionProcess
from ..methods.autoddpm import AutoDDPMSettings, load_autoddpm, mask_threshold_from_healthy
from ..methods.image_ddpm import (
    NETWORK_FOLDER,
    WEIGHTS_STEM,
    image_ddpm_diffusion,
    initial_noise,
    to_network,
)
from ..methods.thor import THORSettings, load_thor
from ..models.weights import save_weights
from ..networks.diffusion_unet import DIFFUSION_UNET_CONFIGS, DiffusionUNet
from .loop import LoopSettings, run_training
from .provenance import half_precision, write_manifest
from .slice_data import (
    SliceSet,
    calibrate_on_validation,
    prepare_slices,
    write_slice_bundle_manifest,
)

# What each method's map is, as the bundle (and every run's report) says: both papers multiply
# by LPIPS, whose ImageNet backbone weights this product does not ship.
ANOMALY_MAPS = {
    "thor": "harmonic mean of the residuals |x0_hat - x| at t = 300, 150, 50 and of the final "
            "residual; no LPIPS factor (no backbone weights): the residual alone",
    "autoddpm": "|x - inpainted| x the normalised coarse residual; no LPIPS factor (no "
                "backbone weights): the residual alone",
}


@dataclass(frozen=True)
class ImageDDPMTraining:
    config: str = "default"
    steps: int = 4000
    batch_size: int = 16  # THOR's and AutoDDPM's code: 8 to 32 slices
    learning_rate: float = 1e-4  # Adam, as both papers' code
    noise: str = "gaussian"  # "simplex": the AnoDDPM-style ablation THOR reports
    thor: THORSettings = THORSettings()  # what the bundle is calibrated and run with
    autoddpm: AutoDDPMSettings = AutoDDPMSettings()
    acquisition_copies: int = 1
    checkpoint_every: int = 250
    log_every: int = 50
    seed: int = 0


def epsilon_loss(network: DiffusionUNet, process: DiffusionProcess, x0: torch.Tensor,
                 t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """L_simple = ||eps - eps_theta(x_t, t)||^2 on the network's [-1, 1] scale."""
    xt = process.q_sample(to_network(x0), t, noise)
    return ((network(xt, t) - noise) ** 2).mean()


def train_network(slices: SliceSet, out: Path, training: ImageDDPMTraining, device: str,
                  log=print) -> DiffusionUNet:
    process = DiffusionProcess(image_ddpm_diffusion())
    torch.manual_seed(training.seed)
    network = DiffusionUNet(DIFFUSION_UNET_CONFIGS[training.config]).to(device)
    optimiser = torch.optim.Adam(network.parameters(), lr=training.learning_rate)

    def step(number: int, rng, generator: torch.Generator) -> dict:
        rows = rng.integers(len(slices.pairs), size=training.batch_size)
        x0, _ = slices.batch(rows, rng.random(training.batch_size) < 0.5)
        t = torch.randint(process.num_timesteps, (training.batch_size,), generator=generator)
        noise = initial_noise(training.noise, tuple(x0.shape), t, generator)
        loss = epsilon_loss(network, process, x0.to(device), t.to(device), noise.to(device))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        return {"mse": loss.item()}

    run_training(out, {"ddpm": network}, {"adam": optimiser}, step,
                 LoopSettings(training.steps, training.seed, training.checkpoint_every,
                              training.log_every), log)
    return network.eval()


def train_image_ddpm(cohort_dir: str | os.PathLike, out: str | os.PathLike,
                     training: ImageDDPMTraining | None = None, device: str = "cpu",
                     log=print) -> Path:
    """Train (or resume) the shared DDPM and write the calibrated THOR/AutoDDPM bundle."""
    training = training or ImageDDPMTraining()
    cohort, out = Path(cohort_dir), Path(out)
    lines: list[str] = []

    def record(message: str) -> None:  # the bundle keeps its own log
        lines.append(message)
        log(message)

    began = time.perf_counter()
    fitted, validation, standard, train_subjects = prepare_slices(
        cohort, training.acquisition_copies, training.seed, record)
    slices = SliceSet.of(fitted)
    record(f"{len(slices.pairs)} training slices")

    folder = out / NETWORK_FOLDER
    network = train_network(slices, folder, training, device, record)
    save_weights(half_precision(network.state_dict()), folder, WEIGHTS_STEM)
    write_manifest(folder, id=f"ddpm-network-{training.config}-ixi-2mm", method="ddpm-network",
                   config=network.config.to_dict(), diffusion=image_ddpm_diffusion().to_dict(),
                   noise=training.noise, weights="float16",
                   training={key: value for key, value in asdict(training).items()
                             if key not in ("thor", "autoddpm")})
    standard.save(out)

    inference = {"thor": asdict(training.thor), "autoddpm": asdict(training.autoddpm)}
    (out / "manifest.json").write_text(json.dumps({"inference": inference}))
    threshold = mask_threshold_from_healthy(load_autoddpm(out).to(device), validation)
    inference["autoddpm"]["mask_threshold"] = threshold
    (out / "manifest.json").write_text(json.dumps({"inference": inference}))
    record(f"AutoDDPM mask threshold {threshold:.4f} (at most "
           f"{training.autoddpm.mask_fpr:.0%} of healthy validation brain pixels above it)")

    calibrations = {}
    for name, loader in (("thor", load_thor), ("autoddpm", load_autoddpm)):
        calibrations[name] = calibrate_on_validation(loader(out).to(device), validation, out,
                                                     f"calibration_{name}")
        record(f"{name}: {calibrations[name].describe()}")
    (out / "training.log").write_text("\n".join(lines) + "\n")
    write_slice_bundle_manifest(
        out, id="ddpm-ixi-2mm", method="thor", variants=["autoddpm"],
        description="An unconditional DDPM on the axial slices of the 2 mm MNI grid, trained "
                    "on healthy IXI subjects harmonised to their intensity standard, with "
                    "acquisition-augmented copies; THOR (Bercea et al. 2024) and AutoDDPM "
                    "(Bercea et al. 2023) run on it.",
        training=training, settings=inference, device=device, standard=standard,
        cohort=cohort, train_subjects=train_subjects, validation=validation,
        validated=calibrations["thor"], began=began,
        anomaly_maps=ANOMALY_MAPS,
        metrics={"autoddpm": {
            "calibration_threshold": calibrations["autoddpm"].calibration.threshold,
            "healthy_flagged_range": calibrations["autoddpm"].calibration.healthy_flagged_range,
            "pseudo_healthy_validation_reconstruction":
                calibrations["autoddpm"].reconstruction,
            "seconds_per_validation_scan":
                round(calibrations["autoddpm"].seconds_per_scan, 1)},
            "mask_threshold": float(np.float32(threshold))})
    return out

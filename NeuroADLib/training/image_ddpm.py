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
from dataclasses import asdict, dataclass
from pathlib import Path

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
from ..networks.diffusion_unet import DIFFUSION_UNET_CONFIGS, DiffusionUNet
from .provenance import save_network
from .slice_data import (
    SliceSet,
    SliceTrainingRun,
    TrainingLog,
    calibrate_on_validation,
    prepare_slices,
    train_slice_diffusion,
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
class ImageDDPMTraining(SliceTrainingRun):
    config: str = "default"
    steps: int = 4000
    batch_size: int = 16  # THOR's and AutoDDPM's code: 8 to 32 slices
    learning_rate: float = 1e-4  # Adam, as both papers' code
    noise: str = "gaussian"  # "simplex": the AnoDDPM-style ablation THOR reports
    thor: THORSettings = THORSettings()  # what the bundle is calibrated and run with
    autoddpm: AutoDDPMSettings = AutoDDPMSettings()


def epsilon_loss(network: DiffusionUNet, process: DiffusionProcess, x0: torch.Tensor,
                 t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """L_simple = ||eps - eps_theta(x_t, t)||^2 on the network's [-1, 1] scale."""
    xt = process.q_sample(to_network(x0), t, noise)
    return ((network(xt, t) - noise) ** 2).mean()


def train_network(slices: SliceSet, out: Path, training: ImageDDPMTraining, device: str,
                  log=print) -> DiffusionUNet:
    torch.manual_seed(training.seed)
    network = DiffusionUNet(DIFFUSION_UNET_CONFIGS[training.config]).to(device)
    return train_slice_diffusion(slices, out, network, DiffusionProcess(image_ddpm_diffusion()),
                                 epsilon_loss, initial_noise, training, device, ("ddpm", "mse"),
                                 log)


def train_image_ddpm(cohort_dir: str | os.PathLike, out: str | os.PathLike,
                     training: ImageDDPMTraining | None = None, device: str = "cpu",
                     log=print) -> Path:
    """Train (or resume) the shared DDPM and write the calibrated THOR/AutoDDPM bundle."""
    training = training or ImageDDPMTraining()
    cohort, out = Path(cohort_dir), Path(out)
    record = TrainingLog(log)
    data = prepare_slices(cohort, training.acquisition_copies, training.seed, record)

    folder = out / NETWORK_FOLDER
    network = train_network(data.slices, folder, training, device, record)
    save_network(folder, network, WEIGHTS_STEM, id=f"ddpm-network-{training.config}-ixi-2mm",
                 method="ddpm-network", diffusion=image_ddpm_diffusion().to_dict(),
                 noise=training.noise, training={key: value for key, value in
                                                 asdict(training).items()
                                                 if key not in ("thor", "autoddpm")})
    data.standard.save(out)

    inference = {"thor": asdict(training.thor), "autoddpm": asdict(training.autoddpm)}
    (out / "manifest.json").write_text(json.dumps({"inference": inference}))
    threshold = mask_threshold_from_healthy(load_autoddpm(out).to(device), data.validation)
    inference["autoddpm"]["mask_threshold"] = threshold
    (out / "manifest.json").write_text(json.dumps({"inference": inference}))
    record(f"AutoDDPM mask threshold {threshold:.4f} (at most "
           f"{training.autoddpm.mask_fpr:.0%} of healthy validation brain pixels reach it)")

    calibrations = {}
    for name, loader in (("thor", load_thor), ("autoddpm", load_autoddpm)):
        calibrations[name] = calibrate_on_validation(loader(out).to(device), data.validation,
                                                     out, f"calibration_{name}")
        record(f"{name}: {calibrations[name].describe()}")
    autoddpm = calibrations["autoddpm"]
    write_slice_bundle_manifest(
        out, id="ddpm-ixi-2mm", method="thor", variants=["autoddpm"],
        description="An unconditional DDPM on the axial slices of the 2 mm MNI grid, trained "
                    "on healthy IXI subjects harmonised to their intensity standard, with "
                    "acquisition-augmented copies; THOR (Bercea et al. 2024) and AutoDDPM "
                    "(Bercea et al. 2023) run on it.",
        training=training, settings=inference, device=device, data=data, cohort=cohort,
        validated=calibrations["thor"], record=record, anomaly_maps=ANOMALY_MAPS,
        metrics={"autoddpm": {
            "calibration_threshold": autoddpm.calibration.threshold,
            "healthy_flagged_range": autoddpm.calibration.healthy_flagged_range,
            "pseudo_healthy_validation_reconstruction": autoddpm.reconstruction,
            "seconds_per_validation_scan": round(autoddpm.seconds_per_scan, 1)},
            "mask_threshold": threshold})
    return out

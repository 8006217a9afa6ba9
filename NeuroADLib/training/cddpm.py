"""Training cDDPM on a prepared healthy cohort, in one resumable command:

1. the cohort's training scans harmonised to its intensity standard, with acquisition-augmented
   copies (training/slice_data.py);
2. F_enc and the conditioned UNet end to end on random axial brain slices (section 3.2):
   t ~ U{0, ..., T-1}, x_t from eq. 1 with simplex noise, loss L_rec = |x0 - f(x_t, t, x0)|
   (section 3.1, x0 prediction with an L1 loss), left-right flips;
3. the bundle: the network, the intensity standard, and the healthy calibration on the
   harmonised validation split.

The paper pre-trains F_enc by masked image modelling (SparK, mask ratio 0.65) as an option;
this trainer trains it from scratch, end to end, as the paper's main configuration does.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..diffusion.process import DiffusionProcess
from ..methods.cddpm import (
    NETWORK_FOLDER,
    WEIGHTS_STEM,
    CDDPMSettings,
    cddpm_diffusion,
    forward_noise,
    load_cddpm,
    to_network,
)
from ..models.weights import save_weights
from ..networks.conditioned_unet import CONDITIONED_UNET_CONFIGS, CDDPMNetwork
from .loop import LoopSettings, run_training
from .provenance import half_precision, write_manifest
from .slice_data import (
    SliceSet,
    calibrate_on_validation,
    prepare_slices,
    write_slice_bundle_manifest,
)


@dataclass(frozen=True)
class CDDPMTraining:
    config: str = "default"
    steps: int = 4000  # about 80 min on 2 CPU cores at the default size
    batch_size: int = 16  # 32 in the paper
    learning_rate: float = 2e-4  # Adam; the paper's 1e-5 over 1600 epochs is for a GPU
    noise: str = "simplex"  # "gaussian" as an ablation
    inference: CDDPMSettings = CDDPMSettings()  # what the bundle is calibrated and run with
    acquisition_copies: int = 1
    checkpoint_every: int = 250
    log_every: int = 50
    seed: int = 0


def cddpm_loss(network: CDDPMNetwork, process: DiffusionProcess, x0: torch.Tensor,
               t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """L_rec = |x0 - f_theta(x_t, t, F_enc(x0))| on the network's [-1, 1] scale."""
    x = to_network(x0)
    xt = process.q_sample(x, t, noise)
    estimate, _ = process.x0_and_eps(network(xt, t, x), xt, t)
    return (estimate - x).abs().mean()


def train_network(slices: SliceSet, out: Path, training: CDDPMTraining, device: str,
                  log=print) -> CDDPMNetwork:
    process = DiffusionProcess(cddpm_diffusion())
    torch.manual_seed(training.seed)
    network = CDDPMNetwork(CONDITIONED_UNET_CONFIGS[training.config]).to(device)
    optimiser = torch.optim.Adam(network.parameters(), lr=training.learning_rate)

    def step(number: int, rng, generator: torch.Generator) -> dict:
        rows = rng.integers(len(slices.pairs), size=training.batch_size)
        x0, _ = slices.batch(rows, rng.random(training.batch_size) < 0.5)
        t = torch.randint(process.num_timesteps, (training.batch_size,), generator=generator)
        noise = forward_noise(training.noise, tuple(x0.shape), t, generator)
        loss = cddpm_loss(network, process, x0.to(device), t.to(device), noise.to(device))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        return {"l1": loss.item()}

    run_training(out, {"cddpm": network}, {"adam": optimiser}, step,
                 LoopSettings(training.steps, training.seed, training.checkpoint_every,
                              training.log_every), log)
    return network.eval()


def train_cddpm(cohort_dir: str | os.PathLike, out: str | os.PathLike,
                training: CDDPMTraining | None = None, device: str = "cpu",
                log=print) -> Path:
    """Train (or resume) cDDPM and write the calibrated bundle to `out`."""
    training = training or CDDPMTraining()
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
    write_manifest(folder, id=f"cddpm-network-{training.config}-ixi-2mm", method="cddpm-network",
                   config=network.config.to_dict(), diffusion=cddpm_diffusion().to_dict(),
                   noise=training.noise, weights="float16",
                   training={key: value for key, value in asdict(training).items()
                             if key != "inference"})

    settings = training.inference
    (out / "manifest.json").write_text(json.dumps({"inference": asdict(settings)}))
    standard.save(out)
    validated = calibrate_on_validation(load_cddpm(out).to(device), validation, out,
                                        "calibration_cddpm")
    record(validated.describe())
    (out / "training.log").write_text("\n".join(lines) + "\n")
    write_slice_bundle_manifest(
        out, id="cddpm-ixi-2mm", method="cddpm",
        description="cDDPM (DDPM conditioned on the clean input, Behrendt et al. 2023) on the "
                    "axial slices of the 2 mm MNI grid, trained on healthy IXI subjects "
                    "harmonised to their intensity standard, with acquisition-augmented copies.",
        training=training, settings=settings, device=device, standard=standard, cohort=cohort,
        train_subjects=train_subjects, validation=validation, validated=validated, began=began)
    return out

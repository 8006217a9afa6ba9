"""Training cDDPM on a prepared healthy cohort, in one resumable command:

1. the cohort's training scans harmonised to its intensity standard, with acquisition-augmented
   copies (training/slice_data.py);
2. F_enc and the conditioned UNet end to end on random axial brain slices (section 3.2):
   t ~ U{0, ..., T-1}, x_t from eq. 1 with simplex noise, loss L_rec = |x0 - f(x_t, t, x0)|
   (section 3.1, x0 prediction with an L1 loss), left-right flips;
3. the bundle: the network, the intensity standard, and the healthy calibration on the
   harmonised validation split.

The paper pre-trains F_enc by masked image modelling (SparK, mask ratio 0.65) as an option:
`pretraining.steps` > 0 runs it first (training/masked_pretraining.py) on the same slice pool;
by default F_enc trains from scratch, end to end, as the paper's main configuration does.
"""

from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..diffusion.noise import SimplexNoiseBank
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
from ..networks.conditioned_unet import CONDITIONED_UNET_CONFIGS, EncoderConditionedNetwork
from .masked_pretraining import MaskedPretraining, pretrain_encoder
from .provenance import save_network
from .slice_data import (
    NoiseDraw,
    SliceSet,
    SliceTrainingRun,
    TrainingLog,
    calibrate_on_validation,
    prepare_slices,
    train_slice_diffusion,
    write_slice_bundle_manifest,
)


@dataclass(frozen=True)
class CDDPMTraining(SliceTrainingRun):
    config: str = "default"
    steps: int = 4000  # about 80 min on 2 CPU cores at the default size
    batch_size: int = 16  # 32 in the paper
    learning_rate: float = 2e-4  # Adam; the paper's 1e-5 over 1600 epochs is for a GPU
    noise: str = "simplex"  # "gaussian" as an ablation
    noise_bank: int = 0  # simplex: 0 draws fresh fields every step; N draws N once (faster)
    inference: CDDPMSettings = CDDPMSettings()  # what the bundle is calibrated and run with
    pretraining: MaskedPretraining = MaskedPretraining()  # F_enc by masked modelling; 0 steps


def cddpm_loss(network: EncoderConditionedNetwork, process: DiffusionProcess, x0: torch.Tensor,
               t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """L_rec = |x0 - f_theta(x_t, t, F_enc(x0))| on the network's [-1, 1] scale."""
    x = to_network(x0)
    xt = process.q_sample(x, t, noise)
    estimate, _ = process.x0_and_eps(network(xt, t, x), xt, t)
    return (estimate - x).abs().mean()


def train_network(slices: SliceSet, out: Path, training: CDDPMTraining, device: str,
                  log=print) -> EncoderConditionedNetwork:
    torch.manual_seed(training.seed)
    network = EncoderConditionedNetwork(CONDITIONED_UNET_CONFIGS[training.config]).to(device)
    if training.pretraining.steps:
        def draw(size: int, rng) -> torch.Tensor:
            x0, _ = slices.batch(rng.integers(len(slices.pairs), size=size),
                                 rng.random(size) < 0.5)
            return to_network(x0)

        log(f"pre-training F_enc by masked modelling ({training.pretraining.steps} steps)")
        pretrain_encoder(network.encoder, draw, slices.images[0].shape[1:], out / "pretraining",
                         training.pretraining, training.seed, training.checkpoint_every,
                         training.log_every, device, log)
    noise = training_noise(training, slices, device, log)
    return train_slice_diffusion(slices, out, network, DiffusionProcess(cddpm_diffusion()),
                                 cddpm_loss, noise, training, device, ("cddpm", "l1"), log)


def training_noise(training: CDDPMTraining, slices: SliceSet, device: str = "cpu",
                   log=print) -> NoiseDraw:
    """The forward process's noise in training: fresh every step, or from a bank of simplex
    fields drawn once from the seed on the training `device` (`noise_bank` > 0;
    diffusion/noise.py says why that is as good a draw)."""
    if not training.noise_bank:
        return forward_noise
    if training.noise != "simplex":
        raise ValueError(f"noise_bank is for simplex noise; this run's noise is "
                         f"{training.noise!r}")

    @functools.cache
    def bank() -> SimplexNoiseBank:  # drawn at the first step: not at all for a finished run
        began = time.perf_counter()
        drawn = SimplexNoiseBank.draw(training.noise_bank, *slices.images[0].shape[1:],
                                      seed=training.seed, device=device)
        log(f"{training.noise_bank} simplex fields drawn on {device} in "
            f"{time.perf_counter() - began:.0f} s")
        return drawn

    return lambda kind, shape, t, generator: bank().sample(shape, generator)


def train_cddpm(cohort_dir: str | os.PathLike, out: str | os.PathLike,
                training: CDDPMTraining | None = None, device: str = "cpu",
                log=print) -> Path:
    """Train (or resume) cDDPM and write the calibrated bundle to `out`."""
    training = training or CDDPMTraining()
    cohort, out = Path(cohort_dir), Path(out)
    record = TrainingLog(log)
    data = prepare_slices(cohort, training.acquisition_copies, training.seed, record)

    folder = out / NETWORK_FOLDER
    network = train_network(data.slices, folder, training, device, record)
    save_network(folder, network, WEIGHTS_STEM, id=f"cddpm-network-{training.config}-ixi-2mm",
                 method="cddpm-network", diffusion=cddpm_diffusion().to_dict(),
                 noise=training.noise, training={key: value for key, value in
                                                 asdict(training).items() if key != "inference"})

    settings = training.inference
    (out / "manifest.json").write_text(json.dumps({"inference": asdict(settings)}))
    data.standard.save(out)
    validated = calibrate_on_validation(load_cddpm(out).to(device), data.validation, out,
                                        "calibration_cddpm")
    record(validated.describe())
    write_slice_bundle_manifest(
        out, id="cddpm-ixi-2mm", method="cddpm",
        description="cDDPM (DDPM conditioned on the clean input, Behrendt et al. 2023) on the "
                    "axial slices of the 2 mm MNI grid, trained on healthy IXI subjects "
                    "harmonised to their intensity standard, with acquisition-augmented copies.",
        training=training, settings=settings, device=device, data=data, cohort=cohort,
        validated=validated, record=record)
    return out

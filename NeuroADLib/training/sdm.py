"""Training SDM and FAM on a prepared healthy cohort, in one resumable command:

1. the cohort's training scans harmonised to its intensity standard, with acquisition-augmented
   copies (training/slice_data.py);
2. the semantic encoder and the AdaGN UNet end to end on random axial brain slices (the
   longitudinal report, eq. 3.2): t ~ U{0, ..., T-1}, x_t from the forward process with
   Gaussian noise, loss ||eps - eps_theta(x_t, t, Enc(x))||^2, left-right flips;
3. FAM's feature extractor Phi, a copy of the trained encoder fine-tuned on healthy (x, x_hat)
   pairs, x_hat reconstructed by SDM from a level drawn from {100, 250, 500, T} per slice
   (section 4.2.2), with the loss of eq. 3.6 against the frozen encoder (lambda_DL 0.1,
   Table 4.2);
4. the bundle: both networks, the intensity standard, and the healthy calibrations of `sdm`
   (D_p) and `sdm_fam` (the FAM score) on the harmonised validation split.

Not done as the report: its encoder is an ImageNet ResNet-50; here it is cDDPM's small ResNet
trained from scratch. The report keeps an EMA of the weights (decay 0.999): `ema_decay` does,
and is 0 by default because the shipped bundle was trained without it.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..diffusion.noise import gaussian_noise
from ..diffusion.process import DiffusionProcess
from ..methods.image_ddpm import SliceNoise, to_network
from ..methods.sdm import (
    FAM_FOLDER,
    FAM_STEM,
    FEATURE_STAGES,
    NETWORK_FOLDER,
    WEIGHTS_STEM,
    SDMModel,
    SDMSettings,
    load_sdm,
    sdm_diffusion,
)
from ..networks.conditioned_unet import (
    CONDITIONED_UNET_CONFIGS,
    ConditionedUNetConfig,
    EncoderConditionedNetwork,
    resnet_features,
)
from .loop import LoopSettings, run_training
from .provenance import save_network
from .slice_data import (
    SliceSet,
    SliceTrainingRun,
    TrainingLog,
    calibrate_predictions,
    prepare_slices,
    train_slice_diffusion,
    write_slice_bundle_manifest,
)

SDM_CONFIGS = {
    # cDDPM's CPU-sized network with AdaGN conditioning: about 1.2 s per batch of 16 on 2 cores.
    "default": replace(CONDITIONED_UNET_CONFIGS["default"], conditioning="adagn"),
    # Table 4.1: channels [32, 64, 96], one residual block per level, d_cond 128 (the
    # report's semantic code has 512 dimensions; here code and time share d); for a GPU.
    "paper": ConditionedUNetConfig(channels=(32, 64, 96), num_res_blocks=1,
                                   attention_at_deepest_level=True, condition_dim=128,
                                   encoder_channels=(64, 128, 256, 512),
                                   encoder_blocks=(3, 4, 6, 3), norm_num_groups=16,
                                   conditioning="adagn"),
    "tiny": replace(CONDITIONED_UNET_CONFIGS["tiny"], conditioning="adagn"),
}


@dataclass(frozen=True)
class FAMTraining:
    """Section 4.2.2 and Table 4.2, with fewer pairs and steps for 2 CPU cores."""

    pairs: int = 320  # healthy training slices reconstructed by SDM
    levels: tuple[int, ...] = (100, 250, 500, 999)  # each pair's level, drawn uniformly
    steps: int = 400
    batch_size: int = 16
    learning_rate: float = 1e-4
    distillation: float = 0.1  # lambda_DL (Table 4.2; the text says 1)


@dataclass(frozen=True)
class SDMTraining(SliceTrainingRun):
    config: str = "default"
    steps: int = 3000  # about 65 min on 2 CPU cores at the default size
    batch_size: int = 16  # 20 in the report
    learning_rate: float = 2e-4  # Adam; the report's 2.5e-5 over 500 epochs is for a GPU
    noise: str = "gaussian"
    fam: FAMTraining = field(default_factory=FAMTraining)
    inference: SDMSettings = SDMSettings()  # what the bundle is calibrated and run with


def sdm_loss(network: EncoderConditionedNetwork, process: DiffusionProcess, x0: torch.Tensor,
             t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Eq. 3.2: ||eps - eps_theta(x_t, t, Enc(x))||^2 on the network's [-1, 1] scale."""
    x = to_network(x0)
    return ((network(process.q_sample(x, t, noise), t, x) - noise) ** 2).mean()


def gaussian_draw(kind: str, shape: tuple, t: torch.Tensor, generator: torch.Generator
                  ) -> torch.Tensor:
    if kind != "gaussian":
        raise ValueError(f"SDM trains with Gaussian noise, not {kind!r}.")
    return gaussian_noise(shape, generator)


def similarity_loss(extractor: nn.Module, frozen: nn.Module, x: torch.Tensor,
                    x_hat: torch.Tensor, distillation: float) -> torch.Tensor:
    """Eq. 3.6: sum over the FAM stages of the mean 1 - cos(Phi_j(x_hat), Phi_j(x)), plus
    lambda_DL times the same distance of Phi from the frozen encoder on x_hat and on x."""
    def distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (1.0 - nn.functional.cosine_similarity(a, b, dim=1)).mean()

    features_x = resnet_features(extractor, x, FEATURE_STAGES)
    features_hat = resnet_features(extractor, x_hat, FEATURE_STAGES)
    with torch.no_grad():
        frozen_x = resnet_features(frozen, x, FEATURE_STAGES)
        frozen_hat = resnet_features(frozen, x_hat, FEATURE_STAGES)
    loss = sum(distance(h, f) for h, f in zip(features_hat, features_x, strict=True))
    loss = loss + distillation * sum(distance(h, f) for h, f in zip(features_hat, frozen_hat,
                                                                   strict=True))
    return loss + distillation * sum(distance(h, f) for h, f in zip(features_x, frozen_x,
                                                                   strict=True))


def reconstruction_pairs(network: EncoderConditionedNetwork, slices: SliceSet,
                         training: FAMTraining, settings: SDMSettings, seed: int,
                         device: str, log=print) -> tuple[torch.Tensor, torch.Tensor]:
    """`training.pairs` random healthy training slices and their SDM reconstructions, each
    from a level drawn from `training.levels` (on [-1, 1]: (n, 1, y, x) each)."""
    rng = np.random.default_rng([seed, 7])
    rows = rng.choice(len(slices.pairs), size=min(training.pairs, len(slices.pairs)),
                      replace=False)
    levels = rng.choice(training.levels, size=len(rows))
    process = DiffusionProcess(sdm_diffusion())
    originals, reconstructions = [], []
    for level in training.levels:
        chosen = rows[levels == level]
        model = SDMModel(network, process, replace(settings, noise_level=int(level),
                                                   encoding="inversion"), device=device)
        for start in range(0, len(chosen), training.batch_size):
            x0, _ = slices.batch(chosen[start:start + training.batch_size],
                                 np.zeros(len(chosen[start:start + training.batch_size]), bool))
            x_hat = model.reconstruct(x0.to(device), np.arange(len(x0)), SliceNoise(seed))
            originals.append(to_network(x0))
            reconstructions.append(to_network(x_hat.cpu()))
        log(f"FAM pairs: {len(chosen)} slices reconstructed from level {level}")
    return torch.cat(originals), torch.cat(reconstructions)


def train_fam(network: EncoderConditionedNetwork, slices: SliceSet, out: Path,
              training: SDMTraining, device: str, log=print) -> nn.Module:
    """Phi: a copy of SDM's encoder fine-tuned by eq. 3.6 (resumes in `out`/checkpoint)."""
    fam = training.fam
    x, x_hat = reconstruction_pairs(network, slices, fam, training.inference, training.seed,
                                    device, log)
    frozen = copy.deepcopy(network.encoder).eval()
    extractor = copy.deepcopy(network.encoder).train()
    optimiser = torch.optim.Adam(extractor.parameters(), lr=fam.learning_rate)

    def step(number: int, rng, generator: torch.Generator) -> dict:
        rows = rng.integers(len(x), size=fam.batch_size)
        loss = similarity_loss(extractor, frozen, x[rows].to(device), x_hat[rows].to(device),
                               fam.distillation)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        return {"similarity": loss.item()}

    run_training(out, {"feature_extractor": extractor}, {"adam": optimiser}, step,
                 LoopSettings(fam.steps, training.seed, training.checkpoint_every,
                              training.log_every), log)
    extractor.config = network.config  # save_network records the config it was built from
    return extractor.eval()


def calibrate_both(model: SDMModel, validation, out: Path) -> dict:
    """The healthy calibrations of `sdm` (D_p) and `sdm_fam` (the FAM score) from one SDM
    reconstruction of each validation scan (the two maps share it)."""
    start = time.perf_counter()
    scores = [model.scores(image, mask) for image, mask in
              zip(validation.images, validation.masks, strict=True)]
    seconds = (time.perf_counter() - start) / len(scores)
    return {name: calibrate_predictions(
        [(model.postprocess(getattr(s, key), mask), s.healthy)
         for s, mask in zip(scores, validation.masks, strict=True)],
        validation, out, f"calibration_{name}", seconds)
        for name, key in (("sdm", "pixel"), ("sdm_fam", "fam"))}


def train_sdm(cohort_dir: str | os.PathLike, out: str | os.PathLike,
              training: SDMTraining | None = None, device: str = "cpu", log=print) -> Path:
    """Train (or resume) SDM and FAM and write the calibrated bundle to `out`."""
    training = training or SDMTraining()
    cohort, out = Path(cohort_dir), Path(out)
    record = TrainingLog(log)
    data = prepare_slices(cohort, training.acquisition_copies, training.seed, record)

    torch.manual_seed(training.seed)
    network = EncoderConditionedNetwork(SDM_CONFIGS[training.config]).to(device)
    network = train_slice_diffusion(data.slices, out / NETWORK_FOLDER, network,
                                    DiffusionProcess(sdm_diffusion()), sdm_loss, gaussian_draw,
                                    training, device, ("sdm", "mse"), record)
    recorded = {key: value for key, value in asdict(training).items() if key != "inference"}
    save_network(out / NETWORK_FOLDER, network, WEIGHTS_STEM,
                 id=f"sdm-network-{training.config}-ixi-2mm", method="sdm-network",
                 diffusion=sdm_diffusion().to_dict(), noise=training.noise, training=recorded)
    extractor = train_fam(network, data.slices, out / FAM_FOLDER, training, device, record)
    save_network(out / FAM_FOLDER, extractor, FAM_STEM,
                 id=f"sdm-fam-{training.config}-ixi-2mm", method="sdm-fam", training=recorded)

    (out / "manifest.json").write_text(json.dumps({"inference": asdict(training.inference)}))
    data.standard.save(out)
    calibrations = calibrate_both(load_sdm(out, "sdm_fam").to(device), data.validation, out)
    for name, validated in calibrations.items():
        record(f"{name}: {validated.describe()}")
    fam = calibrations["sdm_fam"]
    write_slice_bundle_manifest(
        out, id="sdm-ixi-2mm", method="sdm_fam", variants=["sdm", "longitudinal"],
        description="SDM (a DDIM conditioned through AdaGN on a semantic code of its input) "
                    "and FAM's fine-tuned feature extractor, on the axial slices of the 2 mm "
                    "MNI grid, trained on healthy IXI subjects harmonised to their intensity "
                    "standard, with acquisition-augmented copies; the longitudinal method "
                    "fuses their maps over a patient's visits (LAFM).",
        training=training, settings=training.inference, device=device, data=data,
        cohort=cohort, validated=fam, record=record,
        metrics={"sdm": {
            "calibration_threshold": calibrations["sdm"].calibration.threshold,
            "healthy_flagged_range": calibrations["sdm"].calibration.healthy_flagged_range,
            "seconds_per_validation_scan": round(calibrations["sdm"].seconds_per_scan, 1)}})
    return out

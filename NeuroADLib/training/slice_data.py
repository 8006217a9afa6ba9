"""The healthy training scans as a pool of axial brain slices, for the 2D methods' trainers
(MAD-AD, cDDPM): harmonised to the cohort's intensity standard, with acquisition-augmented
copies (the scanner-robustness path every bundle shares)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..diffusion.process import DiffusionProcess
from ..evaluation.metrics import mae_psnr_ssim
from ..methods.base import HEALTHY_FPR, INDEX_TOP_FRACTION, Calibration
from ..preprocessing.harmonisation import IntensityStandard
from ..slices import brain_slices
from .data import CohortSplit
from .harmonisation import harmonised_cohort
from .loop import LoopSettings, run_training
from .provenance import write_manifest


@dataclass(frozen=True)
class SliceTrainingRun:
    """The settings every 2D diffusion trainer shares: acquisition-augmented copies of each
    training scan, checkpoint and log cadence (steps), the seed of every draw, and the decay of
    the weights' moving average that the bundle keeps (0: the last weights)."""

    acquisition_copies: int = 1
    checkpoint_every: int = 250
    log_every: int = 50
    seed: int = 0
    ema_decay: float = 0.0


@dataclass
class SliceSet:
    """The training scans as a pool of axial brain slices: (volume, z) pairs."""

    images: list[np.ndarray]
    masks: list[np.ndarray]
    pairs: np.ndarray  # (n, 2) volume index, slice index
    ages: list[float | None]  # per volume (None where the cohort has no age)

    @classmethod
    def of(cls, split: CohortSplit) -> SliceSet:
        pairs = [(k, int(z)) for k, mask in enumerate(split.masks) for z in brain_slices(mask)]
        return cls(split.images, split.masks, np.array(pairs), split.ages)

    def batch(self, rows: np.ndarray, flips: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, brain masks) as (n, 1, y, x) tensors, left-right flipped where `flips`."""
        images, masks = [], []
        for (k, z), flip in zip(self.pairs[rows], flips, strict=True):
            image, mask = self.images[k][z], self.masks[k][z].astype(np.float32)
            images.append(image[:, ::-1] if flip else image)
            masks.append(mask[:, ::-1] if flip else mask)
        return (torch.from_numpy(np.stack(images)[:, None].astype(np.float32)),
                torch.from_numpy(np.stack(masks)[:, None].astype(np.float32)))


class TrainingLog:
    """A trainer's log: each message goes to `log` and is kept for the bundle's training.log;
    it also times the run from its creation."""

    def __init__(self, log=print) -> None:
        self.lines: list[str] = []
        self.log = log
        self.began = time.perf_counter()

    def __call__(self, message: str) -> None:
        self.lines.append(message)
        self.log(message)

    def save(self, folder: Path) -> None:
        (folder / "training.log").write_text("\n".join(self.lines) + "\n")


@dataclass
class SliceTrainingData:
    """What a 2D trainer trains and calibrates on: the harmonised training scans (and their
    augmented copies) as a slice pool, the harmonised validation split, the intensity standard
    they were harmonised to, and the training subjects."""

    slices: SliceSet
    validation: CohortSplit
    standard: IntensityStandard
    train_subjects: list


def prepare_slices(cohort: Path, copies: int, seed: int, log=print,
                   workers: int | None = None) -> SliceTrainingData:
    """The cohort's training scans harmonised (+ `copies` augmented copies each) as a slice
    pool, its harmonised validation split, and the intensity standard of both
    (training/harmonisation.py's `harmonised_cohort`)."""
    data = harmonised_cohort(cohort, copies, seed, log, workers)
    slices = SliceSet.of(data.train)
    log(f"{len(slices.pairs)} training slices")
    return SliceTrainingData(slices, data.validation, data.standard, data.train_subjects)


@dataclass
class ValidationCalibration:
    """A model's label-free calibration on the healthy validation split, with how faithfully
    its pseudo-healthy images reconstruct those healthy scans and how long it took."""

    calibration: Calibration
    reconstruction: dict[str, float]  # mean MAE / PSNR / SSIM inside the brain
    seconds_per_scan: float

    def describe(self) -> str:
        return (f"calibration: threshold {self.calibration.threshold:.4f} at healthy FPR "
                f"{self.calibration.fpr:.0%}; per-subject flagged "
                f"{self.calibration.healthy_flagged_range}; pseudo-healthy reconstruction "
                f"{self.reconstruction}; {self.seconds_per_scan:.1f} s per validation scan")


def calibrate_on_validation(model, validation: CohortSplit, folder: Path, name: str
                            ) -> ValidationCalibration:
    """Run `model` (an AnomalyModel) on the harmonised healthy validation scans, save its
    calibration as `name` in `folder`, and measure its healthy reconstructions."""
    start = time.perf_counter()
    predictions = [model.predict(image, mask) for image, mask in
                   zip(validation.images, validation.masks, strict=True)]
    return calibrate_predictions(predictions, validation, folder, name,
                                 (time.perf_counter() - start) / len(predictions))


def calibrate_predictions(predictions: list[tuple[np.ndarray, np.ndarray]],
                          validation: CohortSplit, folder: Path, name: str,
                          seconds_per_scan: float) -> ValidationCalibration:
    """The calibration (saved as `name` in `folder`) and reconstruction figures of a model's
    (anomaly map, pseudo-healthy image) on each harmonised healthy validation scan."""
    calibration = Calibration.from_healthy_maps([anomaly for anomaly, _ in predictions],
                                                validation.masks, HEALTHY_FPR,
                                                INDEX_TOP_FRACTION)
    calibration.save(folder, name)
    figures = [mae_psnr_ssim(healthy, image, mask) for (_, healthy), image, mask in
               zip(predictions, validation.images, validation.masks, strict=True)]
    return ValidationCalibration(
        calibration, {key: float(np.mean([f[key] for f in figures])) for key in figures[0]},
        seconds_per_scan)


def write_slice_bundle_manifest(out: Path, *, id: str, method: str, description: str,
                                training, settings, device: str, data: SliceTrainingData,
                                cohort: Path, validated: ValidationCalibration,
                                record: TrainingLog, metrics: dict | None = None,
                                **fields) -> None:
    """The bundle manifest of a 2D method trained on the IXI slices: what every such bundle
    records (data and licence, intensity standard, calibration, validation figures, training
    time), plus the method's own `metrics` and other `fields` (e.g. the `variants` a bundle
    also serves), after the trainer's log. `settings`: the inference settings, a dataclass or
    a mapping of them."""
    calibration = validated.calibration
    record.save(out)
    write_manifest(
        out, id=id, method=method, version="1", contrast="t1", covariates=[],
        description=description, licence="CC BY-SA 3.0, as the IXI data it is derived from",
        inference=settings if isinstance(settings, dict) else asdict(settings),
        spacing_mm=2.0, training=asdict(training), device=device,
        intensity_standard={"file": "intensity_standard.json",
                            "config": asdict(data.standard.config)},
        training_data={"cohort": str(cohort.resolve()), "dataset": "IXI (CC BY-SA 3.0)",
                       "train": data.train_subjects, "validation": data.validation.subjects},
        calibration={"threshold": calibration.threshold, "healthy_fpr_target": HEALTHY_FPR,
                     "healthy_flagged_range": calibration.healthy_flagged_range},
        metrics={**(metrics or {}),
                 "pseudo_healthy_validation_reconstruction": validated.reconstruction,
                 "seconds_per_validation_scan": round(validated.seconds_per_scan, 1),
                 "training_seconds": round(time.perf_counter() - record.began, 1)},
        **fields)


# loss(network, process, x0, t, noise) -> scalar; noise(kind, shape, t, generator) -> tensor
SliceLoss = Callable[[torch.nn.Module, DiffusionProcess, torch.Tensor, torch.Tensor,
                      torch.Tensor], torch.Tensor]
NoiseDraw = Callable[[str, tuple, torch.Tensor, torch.Generator], torch.Tensor]


def train_slice_diffusion(slices: SliceSet, out: Path, network: torch.nn.Module,
                          process: DiffusionProcess, loss: SliceLoss, noise: NoiseDraw,
                          training, device: str, names: tuple[str, str], log=print
                          ) -> torch.nn.Module:
    """Train (or resume, in `out`/checkpoint) an image-space diffusion network on random
    slices of the pool, left-right flipped at random: t ~ U{0, ..., T-1}, the noise of
    `training.noise`, Adam at `training.learning_rate`, batches of `training.batch_size`.
    `names`: (the network's checkpoint name, the loss's name in the log)."""
    optimiser = torch.optim.Adam(network.parameters(), lr=training.learning_rate)
    module_name, loss_name = names

    def step(number: int, rng, generator: torch.Generator) -> dict:
        rows = rng.integers(len(slices.pairs), size=training.batch_size)
        x0, _ = slices.batch(rows, rng.random(training.batch_size) < 0.5)
        t = torch.randint(process.num_timesteps, (training.batch_size,), generator=generator)
        drawn = noise(training.noise, tuple(x0.shape), t, generator)
        value = loss(network, process, x0.to(device), t.to(device), drawn.to(device))
        optimiser.zero_grad(set_to_none=True)
        value.backward()
        optimiser.step()
        return {loss_name: value.item()}

    run_training(out, {module_name: network}, {"adam": optimiser}, step,
                 LoopSettings(training.steps, training.seed, training.checkpoint_every,
                              training.log_every, training.ema_decay), log)
    return network.eval()

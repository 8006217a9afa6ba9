"""The voxel-wise normative intensity model (`zscore`): the classical normative baseline.

Every scan's intensities are first standardised to the training cohort (piecewise-linear
matching of brain percentiles, Nyul-Udupa), so that a scan from another scanner or protocol is
compared in the cohort's intensity scale. For every grid voxel, the mean and standard
deviation of healthy training scans (optionally with a linear age term fitted by least
squares per voxel); a scan's anomaly map is |z|, the
number of healthy standard deviations each voxel lies from its expected value, and its
pseudo-healthy image is the expected value itself. Images are smoothed with a small Gaussian
(sigma in voxels) before fitting and scoring, as in voxel-based morphometry, so that residual
misregistration does not dominate the map.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..preprocessing.intensity import brain_quantiles, standardise
from ..progress import StepCallback
from ..subject import UNKNOWN, Subject

MIN_STD = 0.02  # floor of the per-voxel std (normalised intensity units)


@dataclass(frozen=True)
class ZScoreConfig:
    age_adjusted: bool = True
    standardise_intensities: bool = True
    smoothing_sigma_voxels: float = 1.0
    min_coverage: float = 0.9  # a voxel is modelled if inside this fraction of training brains
    # Acquisition-augmented copies of every training scan added to the statistics, so that the
    # per-voxel spread covers other scanners and protocols, not only the training scanner's.
    acquisition_copies: int = 2


@dataclass
class VoxelNormativeModel:
    """Per-voxel normative statistics on the model grid ((z, y, x) arrays)."""

    mean: np.ndarray
    std: np.ndarray
    age_slope: np.ndarray
    mean_age: float
    support: np.ndarray
    config: ZScoreConfig
    reference_quantiles: np.ndarray

    @classmethod
    def fit(cls, images: list[np.ndarray], masks: list[np.ndarray],
            ages: list[float] | None = None, config: ZScoreConfig | None = None
            ) -> VoxelNormativeModel:
        """Least-squares per voxel: x = mean + slope * (age - mean_age) + residual; std is the
        residual standard deviation (n - 2 degrees of freedom with age, n - 1 without)."""
        config = config or ZScoreConfig()
        if config.age_adjusted and (ages is None or any(a is None for a in ages)):
            raise ValueError("an age-adjusted model needs the age of every training subject")
        reference = np.mean([brain_quantiles(image, mask) for image, mask in
                             zip(images, masks, strict=True)], axis=0)
        if config.standardise_intensities:
            images = [standardise(image, mask, reference) for image, mask in
                      zip(images, masks, strict=True)]
        support = np.mean(np.stack(masks).astype(bool), axis=0) >= config.min_coverage
        mean_age = float(np.mean(ages)) if ages is not None else 0.0
        centred = (np.asarray(ages, np.float64) - mean_age if config.age_adjusted
                   else np.zeros(len(images)))
        # Running sums (one scan in memory at a time): sum x, sum c x and sum x^2, c the centred
        # age; then mean = sum x / n, slope = sum c x / sum c^2, and the residual sum of
        # squares is sum x^2 - n mean^2 - slope^2 sum c^2.
        total = weighted = squares = 0.0
        for image, age in zip(images, centred, strict=True):
            x = _smooth(image, config).astype(np.float64)
            total, weighted, squares = total + x, weighted + age * x, squares + x * x
        count = len(images)
        mean = total / count
        slope = weighted / np.sum(centred**2) if config.age_adjusted else np.zeros_like(mean)
        dof = count - 2 if config.age_adjusted else count - 1
        residual = squares - count * mean**2 - slope**2 * np.sum(centred**2)
        std = np.maximum(np.sqrt(np.maximum(residual, 0.0) / dof), MIN_STD)
        std[~support] = np.inf  # no model outside the support: its |z| is 0 there
        return cls(_half(mean), _half(std), _half(slope), mean_age, support, config, reference)

    def expected(self, age: float | None = None) -> np.ndarray:
        """The healthy expectation at an age (the pseudo-healthy image)."""
        if not self.config.age_adjusted or age is None:
            return self.mean
        return self.mean + self.age_slope * np.float32(age - self.mean_age)

    def predict(self, image: np.ndarray, brain: np.ndarray, subject: Subject = UNKNOWN,
                on_step: StepCallback | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(|z| map, the expected healthy image at the subject's age) inside the brain, in one
        step (`on_step(1, 1)` once it is done)."""
        anomaly = self.anomaly_map(image, brain, subject)
        healthy = (self.expected(subject.age) * (brain > 0)).astype(np.float32)
        if on_step is not None:
            on_step(1, 1)
        return anomaly, healthy

    def anomaly_map(self, image: np.ndarray, brain: np.ndarray,
                    subject: Subject = UNKNOWN) -> np.ndarray:
        """|z| inside the brain and the model's support, 0 elsewhere."""
        if self.config.standardise_intensities:
            image = standardise(image, brain, self.reference_quantiles)
        z = (_smooth(image, self.config) - self.expected(subject.age)) / self.std
        return (np.abs(z) * (brain.astype(bool) & self.support)).astype(np.float32)

    def save(self, folder: str | os.PathLike) -> Path:
        """Weights as safetensors, config as JSON (nothing pickled). Only the voxels that
        carry information are stored (the expectation where it is non-zero, the std inside the
        support), with bit masks saying where: a third of the full grids' size."""
        from safetensors.numpy import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        modelled = (self.mean != 0) | (self.age_slope != 0)
        save_file({"mean": self.mean[modelled].astype(np.float16),
                   "age_slope": self.age_slope[modelled].astype(np.float16),
                   "std": self.std[self.support].astype(np.float16),
                   "modelled": np.packbits(modelled), "support": np.packbits(self.support),
                   "reference_quantiles": self.reference_quantiles.astype(np.float64)},
                  str(folder / "zscore.safetensors"))
        (folder / "zscore.json").write_text(json.dumps(
            {"config": asdict(self.config), "mean_age": self.mean_age,
             "shape": list(self.mean.shape)}, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> VoxelNormativeModel:
        from safetensors.numpy import load_file

        folder = Path(folder)
        arrays = load_file(str(folder / "zscore.safetensors"))
        meta = json.loads((folder / "zscore.json").read_text())
        shape = tuple(meta["shape"])
        modelled, support = (np.unpackbits(arrays[key], count=int(np.prod(shape)))
                             .reshape(shape).astype(bool) for key in ("modelled", "support"))
        mean, slope = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
        std = np.full(shape, np.inf, np.float32)
        mean[modelled], slope[modelled] = arrays["mean"], arrays["age_slope"]
        std[support] = arrays["std"]
        return cls(mean, std, slope, float(meta["mean_age"]), support,
                   ZScoreConfig(**meta["config"]), arrays["reference_quantiles"])


def load_zscore(folder: Path, name: str, options: dict) -> VoxelNormativeModel:
    """The registry's loader of the zscore family (it takes no options)."""
    return VoxelNormativeModel.load(folder)


def _half(array: np.ndarray) -> np.ndarray:
    """Round to the stored precision (float16, which halves the bundle) so that the model that
    is calibrated and evaluated is exactly the one that is saved."""
    return array.astype(np.float16).astype(np.float32)


def _smooth(image: np.ndarray, config: ZScoreConfig) -> np.ndarray:
    if config.smoothing_sigma_voxels <= 0:
        return image.astype(np.float32)
    return ndimage.gaussian_filter(image.astype(np.float32), config.smoothing_sigma_voxels)

"""Healthy ageing as a cross-sectional cohort shows it, for pseudo-longitudinal sequences.

No longitudinal scans are available to NeuroAD, so TDM learns, and the imputation benchmark
measures, follow-ups made from one scan and the cohort's age trend: every voxel's intensity
fitted by least squares as a quadratic in age over the healthy training scans (registered to
one grid and harmonised),

    x(v, age) = b0(v) + b1(v) c + b2(v) c^2,    c = (age - mean_age) / 10,

and a follow-up `gap` years later at a subject's own rate r,

    x_b = x_a + r [b1 (c_b - c_a) + b2 (c_b^2 - c_a^2)]   inside the brain.

This is the population's mean change (ventricles widening, grey matter thinning, as intensity),
scaled per subject; it is not any one person's progression.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

DECADE = 10.0


@dataclass(frozen=True)
class AgeTrend:
    """The per-voxel age coefficients b1 (per decade) and b2 (per decade squared) of the
    quadratic fit, centred on `mean_age`."""

    linear: np.ndarray
    quadratic: np.ndarray
    mean_age: float

    @classmethod
    def fit(cls, images: list[np.ndarray], ages: list[float], smoothing_voxels: float = 1.0
            ) -> AgeTrend:
        """Least squares per voxel of the (Gaussian-smoothed) images on 1, c, c^2."""
        if len(images) != len(ages) or len(images) < 4:
            raise ValueError(f"An age trend needs at least 4 scans with one age each, not "
                             f"{len(images)} scans and {len(ages)} ages.")
        mean_age = float(np.mean(ages))
        centred = (np.asarray(ages, np.float64) - mean_age) / DECADE
        design = np.stack([np.ones_like(centred), centred, centred**2], axis=1)
        solve = np.linalg.solve(design.T @ design, design.T)  # (3, n): coefficients of each scan
        linear, quadratic = np.zeros(images[0].shape), np.zeros(images[0].shape)
        for k, image in enumerate(images):
            smooth = ndimage.gaussian_filter(np.asarray(image, np.float64), smoothing_voxels)
            linear += solve[1, k] * smooth
            quadratic += solve[2, k] * smooth
        return cls(linear.astype(np.float32), quadratic.astype(np.float32), mean_age)

    def change(self, age: float, gap: float, z: int | slice = slice(None)) -> np.ndarray:
        """The mean intensity change from `age` to `age + gap` at every voxel (of axial
        slice `z` only, when given)."""
        a = (age - self.mean_age) / DECADE
        b = (age + gap - self.mean_age) / DECADE
        return (self.linear[z] * (b - a) + self.quadratic[z] * (b * b - a * a)
                ).astype(np.float32)

    def follow_up(self, image: np.ndarray, brain: np.ndarray, age: float, gap: float,
                  rate: float = 1.0) -> np.ndarray:
        """The scan `gap` years on, ageing at `rate` times the cohort's mean (brain only)."""
        return (image + rate * self.change(age, gap) * (brain > 0)).astype(np.float32)

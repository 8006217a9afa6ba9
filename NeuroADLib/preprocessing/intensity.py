"""Intensity normalisation inside the brain.

Choice: divide by the 99.5th percentile of the brain's intensities and clip to [0, 1], with
everything outside the brain set to 0. After N4 the brain's brightest tissue (white matter on
T1) sits just below 1 on every scanner, zero keeps its meaning (no signal), and a handful of
very bright voxels (vessels, enhancement) cannot compress the rest of the range. The scale is
recorded so that results can be mapped back to scanner units.
"""

from __future__ import annotations

import numpy as np

NORMALISATION_PERCENTILE = 99.5


def normalise_in_brain(
    image: np.ndarray, brain: np.ndarray, percentile: float = NORMALISATION_PERCENTILE
) -> tuple[np.ndarray, float]:
    """Return (normalised image, scale) with image / scale clipped to [0, 1] inside the brain."""
    values = image[brain > 0]
    if values.size == 0:
        raise ValueError("the brain mask is empty")
    scale = float(np.percentile(values, percentile))
    if scale <= 0:
        raise ValueError("the brain has no positive intensities")
    normalised = np.clip(image / scale, 0.0, 1.0) * (brain > 0)
    return normalised.astype(np.float32), scale


# Landmarks of the piecewise-linear intensity standardisation (Nyul & Udupa 1999).
STANDARDISATION_PERCENTILES = (2.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0,
                               95.0, 98.0)


def brain_quantiles(image: np.ndarray, brain: np.ndarray,
                    percentiles: tuple[float, ...] = STANDARDISATION_PERCENTILES) -> np.ndarray:
    return np.percentile(image[brain > 0], percentiles)


def standardise(image: np.ndarray, brain: np.ndarray, reference: np.ndarray,
                percentiles: tuple[float, ...] = STANDARDISATION_PERCENTILES) -> np.ndarray:
    """Map the image's brain percentiles onto `reference` piecewise-linearly (Nyul-Udupa
    histogram standardisation), extrapolating the end segments so that intensities beyond the
    outer landmarks (lesions among them) keep their distance instead of being clipped. Removes
    scanner-dependent brightness and contrast differences; zero outside the brain."""
    source = brain_quantiles(image, brain, percentiles)
    # Strictly rising landmarks even where the histogram has a plateau (e.g. clipped values).
    step = 1e-6 * max(float(source[-1] - source[0]), 1e-6)
    for k in range(1, len(source)):
        source[k] = max(source[k], source[k - 1] + step)
    mapped = np.interp(image, source, reference)
    low_slope = (reference[1] - reference[0]) / (source[1] - source[0])
    high_slope = (reference[-1] - reference[-2]) / (source[-1] - source[-2])
    mapped = np.where(image < source[0], reference[0] + (image - source[0]) * low_slope, mapped)
    mapped = np.where(image > source[-1], reference[-1] + (image - source[-1]) * high_slope,
                      mapped)
    return (mapped * (brain > 0)).astype(np.float32)

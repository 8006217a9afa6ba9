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

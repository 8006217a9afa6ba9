"""Normative map calibration: any method's voxel map turned into a z-map against that method's
own healthy validation maps, which removes the method's systematic error at each location (a
reconstruction that is always worse at the cortex, a z-score that is always high at the
ventricles' edge) so that what remains is what is unusual for this place.

    normative(v) = max(0, (map(v) - healthy mean(v)) / healthy std(v))

The healthy statistics are those of `ReferenceStatistics` (the ones CADD's abnormality index
uses). A threshold on normative maps is calibrated on leave-one-out normative maps of the
healthy validation scans (each against the statistics of the others), so that it is not fitted
on the very maps it thresholds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .scores import ReferenceStatistics, zscore_map
from .thresholds import healthy_calibrated_threshold


def normative_map(raw: np.ndarray, reference: ReferenceStatistics, brain: np.ndarray
                  ) -> np.ndarray:
    """How many healthy standard deviations above the healthy mean each voxel's map value
    lies (0 below the mean, outside the brain, and where healthy scans give no evidence)."""
    z = zscore_map(raw, reference)
    return (np.maximum(z, 0.0) * np.asarray(brain, bool)).astype(np.float32)


def leave_one_out_normative_maps(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                                 top_fraction: float = 0.01, smoothing_sigma: float = 0.0
                                 ) -> list[np.ndarray]:
    """Every healthy map as a normative map against the statistics of the other maps
    (`smoothing_sigma`: as `ReferenceStatistics.from_healthy_maps`)."""
    if len(maps) < 3:
        raise ValueError("leave-one-out normative maps need at least three healthy subjects")
    out = []
    for k in range(len(maps)):
        others = [m for j, m in enumerate(maps) if j != k]
        other_masks = [m for j, m in enumerate(masks) if j != k]
        reference = ReferenceStatistics.from_healthy_maps(others, other_masks, top_fraction,
                                                          smoothing_sigma)
        out.append(normative_map(maps[k], reference, masks[k]))
    return out


def normative_threshold(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                        fpr: float = 0.01, top_fraction: float = 0.01,
                        smoothing_sigma: float = 0.0) -> tuple[float, list[float]]:
    """The healthy-calibrated threshold of normative maps (at most `fpr` of leave-one-out
    healthy brain voxels above it), and each healthy subject's flagged share at it."""
    loo = leave_one_out_normative_maps(maps, masks, top_fraction, smoothing_sigma)
    threshold = healthy_calibrated_threshold(loo, masks, fpr)
    flagged = [float((m[np.asarray(mask, bool)] > threshold).mean())
               for m, mask in zip(loo, masks, strict=True)]
    return threshold, flagged

"""Ways to choose the threshold that turns an anomaly map into a lesion segmentation.

Every strategy returns a float t; `binarize` then flags the voxels with value > t inside the
brain mask. Only `healthy_calibrated_threshold` can be used on a new scan without lesion labels
or per-scan tuning, which is why it is the product default.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from skimage.filters import threshold_yen


def _in_mask(anomaly_map: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The map's values (float, 1-D) inside `mask`, or all of them when no mask is given."""
    anomaly_map = np.asarray(anomaly_map, dtype=np.float64)
    if mask is None:
        return anomaly_map.ravel()
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != anomaly_map.shape:
        raise ValueError(f"mask {mask.shape} and map {anomaly_map.shape} differ in shape")
    if not mask.any():
        raise ValueError("mask is empty")
    return anomaly_map[mask]


def fixed_threshold(anomaly_map: np.ndarray, value: float) -> float:
    """A threshold set by hand, e.g. from a publication; it takes the map only so that all
    strategies share the signature (map, ...) -> float."""
    if not np.isfinite(value):
        raise ValueError(f"threshold must be finite, got {value}")
    return float(value)


def percentile_threshold(
    anomaly_map: np.ndarray, q: float, mask: np.ndarray | None = None
) -> float:
    """The q-th percentile (0-100) of the map inside `mask`: flags about (100 - q)% of the
    brain of every scan, whether it has lesions or not."""
    return float(np.percentile(_in_mask(anomaly_map, mask), q))


def yen_threshold(anomaly_map: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Yen's threshold (skimage) of the map's values inside `mask`: an automatic per-scan
    choice that assumes the histogram has an anomalous mode to separate."""
    return float(threshold_yen(_in_mask(anomaly_map, mask)))


def healthy_calibrated_threshold(
    healthy_maps: Sequence[np.ndarray],
    healthy_masks: Sequence[np.ndarray],
    fpr: float = 0.01,
) -> float:
    """The smallest t such that at most a fraction `fpr` of all pooled healthy-brain voxels
    have value > t: the exact (1 - fpr) quantile of the sorted pooled values.

    This is the product default: it needs only scans of healthy subjects, no lesion labels,
    and it fixes the expected false-positive rate on healthy tissue. It is computed once on
    healthy validation scans and stored with the model it calibrates.
    """
    if not 0 <= fpr < 1:
        raise ValueError(f"fpr must be in [0, 1), got {fpr}")
    values = np.sort(np.concatenate([
        _in_mask(m, mask) for m, mask in zip(healthy_maps, healthy_masks, strict=True)
    ]))
    # At most `allowed` voxels may lie above t, so t is the (allowed + 1)-th largest value.
    # The epsilon keeps float error (0.29 * 100 = 28.999...) from losing one allowed voxel.
    allowed = int(np.floor(fpr * values.size + 1e-9))
    return float(values[values.size - 1 - allowed])


def binarize(
    anomaly_map: np.ndarray, threshold: float, mask: np.ndarray | None = None
) -> np.ndarray:
    """Boolean segmentation: voxels with value > `threshold`, inside `mask` when given."""
    segmentation = np.asarray(anomaly_map) > threshold
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != segmentation.shape:
            raise ValueError(f"mask {mask.shape} and map {segmentation.shape} differ in shape")
        segmentation &= mask
    return segmentation

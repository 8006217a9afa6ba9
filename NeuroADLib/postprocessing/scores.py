"""Subject-level scores: one number per scan saying how abnormal it is.

Two families. Image-level scores summarise the anomaly map directly (max, mean, mean of the
top k voxels or of an upper quantile). The normative route of CADD first turns the map into
voxel-wise z-scores against healthy subjects (`ReferenceStatistics`, `zscore_map`), takes the
mean of the most extreme z-scores (`abnormality_index`) and finally expresses that index in
healthy standard deviations (`index_zscore`). All maps live on the model grid, so voxel v is
the same anatomical location in every subject.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .thresholds import _in_mask

_STD_FLOOR = 1e-6  # keeps a voxel that is constant over healthy subjects from dividing by 0
# A voxel's z-score needs healthy evidence: at least this fraction of the subjects (and two) must
# cover it, and its std is floored at this fraction of the median std of the voxels where the
# healthy maps vary at all, so that a voxel seen by one or two brains, or where healthy maps
# happen to agree (a sparse map, such as AutoDDPM's masked one, is 0 in most of a healthy
# brain), cannot dominate the index.
MIN_COVERAGE = 0.5
RELATIVE_STD_FLOOR = 0.1


@dataclass(frozen=True)
class ReferenceStatistics:
    """What healthy validation subjects look like: the voxel-wise mean and std of their
    anomaly maps, and the mean and std of their abnormality indices (computed with
    `top_fraction`)."""

    mean: np.ndarray
    std: np.ndarray
    index_mean: float
    index_std: float
    top_fraction: float

    @classmethod
    def from_healthy_maps(
        cls,
        maps: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        top_fraction: float = 0.01,
        smoothing_sigma: float = 0.0,
    ) -> ReferenceStatistics:
        """Statistics of at least two healthy subjects' maps and brain masks. At each voxel
        the mean and (population) std use only the subjects whose mask covers it. Where fewer
        than `MIN_COVERAGE` of the subjects (or fewer than two) cover a voxel the std is
        infinite, so that its z-score is 0 (no evidence either way); elsewhere it is floored
        at `RELATIVE_STD_FLOOR` times the median of the non-zero stds. The subjects' indices
        are computed with these same statistics, i.e. in-sample.

        With `smoothing_sigma` > 0 (voxels) the std pools a Gaussian neighbourhood (the
        squared deviations from each voxel's own mean and the covering counts smoothed, the
        mean left as it is): the variance smoothing of SnPM's pseudo-t (Holmes et al. 1996;
        Nichols & Holmes 2002), for when a few dozen healthy subjects give a noisy std voxel
        by voxel and the most extreme z-scores come from where they happened to agree."""
        maps = np.stack([np.asarray(m, dtype=np.float64) for m in maps])
        masks = np.stack([np.asarray(m, dtype=bool) for m in masks])
        if maps.shape != masks.shape:
            raise ValueError(f"maps {maps.shape} and masks {masks.shape} differ in shape")
        if len(maps) < 2:
            raise ValueError("reference statistics need at least two healthy subjects")
        count = masks.sum(axis=0)
        supported = count >= max(2, math.ceil(MIN_COVERAGE * len(maps)))
        safe_count = np.maximum(count, 1)
        mean = np.where(masks, maps, 0.0).sum(axis=0) / safe_count
        squares = np.where(masks, (maps - mean) ** 2, 0.0).sum(axis=0)
        if smoothing_sigma > 0:
            raw_std = _smoothed_std(squares, count, smoothing_sigma)
        else:
            raw_std = np.sqrt(squares / safe_count)
        varying = supported & (raw_std > 0)
        floor = max(RELATIVE_STD_FLOOR * float(np.median(raw_std[varying]))
                    if varying.any() else 0.0, _STD_FLOOR)
        std = np.where(supported, np.maximum(raw_std, floor), np.inf)
        voxel_statistics = cls(mean, std, 0.0, 1.0, top_fraction)
        indices = [
            abnormality_index(zscore_map(m, voxel_statistics), mask, top_fraction)
            for m, mask in zip(maps, masks, strict=True)
        ]
        return cls(
            mean=mean,
            std=std,
            index_mean=float(np.mean(indices)),
            index_std=max(float(np.std(indices)), _STD_FLOOR),
            top_fraction=top_fraction,
        )


def _smoothed_std(squares: np.ndarray, count: np.ndarray, sigma: float) -> np.ndarray:
    """sqrt(G * squares / G * count): the pooled std of a Gaussian neighbourhood (`sigma`
    voxels), from each voxel's summed squared deviations from its own mean and its count of
    covering subjects."""
    from scipy.ndimage import gaussian_filter

    pooled_count = gaussian_filter(count.astype(np.float64), sigma, mode="constant")
    pooled_squares = gaussian_filter(squares, sigma, mode="constant")
    seen = pooled_count > 1e-6  # elsewhere no covering subject is near: no std (0)
    return np.sqrt(np.where(seen, pooled_squares / np.where(seen, pooled_count, 1.0), 0.0))


def zscore_map(anomaly_map: np.ndarray, reference: ReferenceStatistics) -> np.ndarray:
    """(map - healthy mean) / healthy std, voxel by voxel: how unusual each voxel's anomaly
    score is for that location."""
    anomaly_map = np.asarray(anomaly_map, dtype=np.float64)
    if anomaly_map.shape != reference.mean.shape:
        raise ValueError(f"map {anomaly_map.shape} and reference {reference.mean.shape} "
                         "differ in shape")
    return (anomaly_map - reference.mean) / reference.std


def _top_values(values: np.ndarray, count: int) -> np.ndarray:
    """The `count` largest of `values` (in no particular order)."""
    return np.partition(values, values.size - count)[values.size - count:]


def abnormality_index(
    z_map: np.ndarray, mask: np.ndarray, top_fraction: float = 0.01
) -> float:
    """CADD's extreme-value statistic: the mean of the highest `top_fraction` (1% or 5%) of
    z-scores inside the brain mask, at least one voxel. Focal lesions move it strongly while
    they barely change the whole-brain mean."""
    if not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    values = _in_mask(z_map, mask)
    count = max(1, math.ceil(top_fraction * values.size))
    return float(np.mean(_top_values(values, count)))


def index_zscore(index: float, reference: ReferenceStatistics) -> float:
    """How many healthy standard deviations a subject's abnormality index lies above the
    healthy mean (use the reference's `top_fraction` for the index)."""
    return (index - reference.index_mean) / reference.index_std


def max_score(anomaly_map: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Highest voxel score inside the mask: sensitive to one bright lesion, and to one
    artefact."""
    return float(np.max(_in_mask(anomaly_map, mask)))


def mean_score(anomaly_map: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean voxel score inside the mask: robust, but diluted by the healthy brain."""
    return float(np.mean(_in_mask(anomaly_map, mask)))


def top_k_mean(anomaly_map: np.ndarray, mask: np.ndarray | None, k: int) -> float:
    """Mean of the `k` highest voxel scores inside the mask: between max and mean."""
    values = _in_mask(anomaly_map, mask)
    if not 1 <= k <= values.size:
        raise ValueError(f"k must be between 1 and {values.size}, got {k}")
    return float(np.mean(_top_values(values, k)))


def quantile_mean(anomaly_map: np.ndarray, mask: np.ndarray | None, q: float) -> float:
    """Mean of the voxel scores at or above their q-quantile (0-1) inside the mask; never
    empty, since the maximum always qualifies."""
    if not 0 <= q <= 1:
        raise ValueError(f"q must be in [0, 1], got {q}")
    values = _in_mask(anomaly_map, mask)
    return float(np.mean(values[values >= np.quantile(values, q)]))

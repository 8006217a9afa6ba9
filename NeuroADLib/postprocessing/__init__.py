"""From residual to result: filters that clean anomaly maps, thresholds that turn them into
segmentations, and subject-level scores (image-level and normative z-score indices)."""

from .filters import (
    clip_and_rescale,
    erode_brain_mask,
    filtered_in_eroded_brain,
    gaussian_smooth,
    median_filter,
    remove_small_components,
    shift_aligned_residual,
)
from .normative import leave_one_out_normative_maps, normative_map, normative_threshold
from .scores import (
    ReferenceStatistics,
    abnormality_index,
    index_zscore,
    max_score,
    mean_score,
    quantile_mean,
    top_k_mean,
    zscore_map,
)
from .thresholds import (
    binarize,
    fixed_threshold,
    healthy_calibrated_threshold,
    percentile_threshold,
    yen_threshold,
)

__all__ = [
    "ReferenceStatistics",
    "abnormality_index",
    "binarize",
    "clip_and_rescale",
    "erode_brain_mask",
    "filtered_in_eroded_brain",
    "fixed_threshold",
    "gaussian_smooth",
    "healthy_calibrated_threshold",
    "index_zscore",
    "leave_one_out_normative_maps",
    "max_score",
    "mean_score",
    "median_filter",
    "normative_map",
    "normative_threshold",
    "percentile_threshold",
    "quantile_mean",
    "remove_small_components",
    "shift_aligned_residual",
    "top_k_mean",
    "yen_threshold",
    "zscore_map",
]

"""Reading a patient's visits together (the longitudinal report, sections 3.2.2-3.2.3): LAFM
fuses each visit's anomaly score map with the other visits' maps, and the per-patient Yen
segmentation binarises all visits at once without labels.

Every array of one patient is in one frame (the visits aligned to the first one), so that a
voxel is the same anatomy in every visit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .thresholds import yen_threshold


@dataclass(frozen=True)
class LAFMSettings:
    """Eq. 3.7-3.8's knobs with the report's defaults; `sigma` in years of visit time
    (0: every other visit weighs the same)."""

    sigma: float = 2.5
    beta: float = 1.0  # how strongly a score the other visits do not share is damped
    gamma: float = 0.1  # how much of the other visits' score is added


def visit_weights(times: Sequence[float], target: int, sigma: float) -> np.ndarray:
    """w_l = exp(-(l - l_target)^2 / (2 sigma^2)) over the other visits (eq. 3.7), in visit
    order without the target; sigma 0: all 1."""
    times = np.asarray(times, dtype=float)
    others = np.delete(times, target)
    if sigma <= 0:
        return np.ones(len(others))
    return np.exp(-((others - times[target]) ** 2) / (2.0 * sigma**2))


def min_max(volume: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Min-max normalisation over the voxels `inside` (0 outside them, and 0 for a constant
    map)."""
    values = volume[inside]
    if values.size == 0 or values.max() == values.min():
        return np.zeros(volume.shape, np.float32)
    return (np.where(inside, (volume - values.min()) / (values.max() - values.min()), 0.0)
            .astype(np.float32))


def lafm(scores: Sequence[np.ndarray], times: Sequence[float], brain: np.ndarray,
         settings: LAFMSettings = LAFMSettings()) -> list[np.ndarray]:
    """Each visit's score map fused with the others' (eq. 3.7-3.8):
        s_ref  = sum_l w_l s_l / sum_l w_l                  over the other visits l
        s_temp = s (1 - beta (1 - Norm(s_ref))) + gamma s_ref
    with Norm the min-max over the brain. The weighted mean (the report's average pooling of
    the weighted maps, divided by the weights' sum) keeps s_ref on the scores' scale. One
    visit: returned as it is (nothing to fuse with)."""
    if len(scores) != len(times):
        raise ValueError(f"{len(scores)} score maps but {len(times)} visit times.")
    if len(scores) < 2:
        return [np.asarray(s, np.float32) for s in scores]
    inside = np.asarray(brain) > 0
    fused = []
    for target, s in enumerate(scores):
        weights = visit_weights(times, target, settings.sigma)
        others = [m for k, m in enumerate(scores) if k != target]
        reference = sum(w * m for w, m in zip(weights, others, strict=True)) / weights.sum()
        damping = 1.0 - settings.beta * (1.0 - min_max(reference, inside))
        fused.append(((s * damping + settings.gamma * reference) * inside).astype(np.float32))
    return fused


@dataclass
class YenSegmentation:
    """The per-patient segmentation of eq. 3.9: per visit, the voxels whose normalised score
    reaches Yen's threshold of all visits' scores and whose pixel distance reaches Yen's
    threshold of the pixel distances inside that score mask."""

    masks: list[np.ndarray]
    score_threshold: float  # on the per-patient min-max normalised scores
    pixel_threshold: float  # on the pixel distances
    raw_score_threshold: float  # score_threshold on the scores' own scale


def yen_segmentation(scores: Sequence[np.ndarray], pixels: Sequence[np.ndarray],
                     brains: Sequence[np.ndarray]) -> YenSegmentation:
    """Eq. 3.9 over one patient's visits (scores already median filtered): the scores
    min-max normalised over all visits' brains, m = score >= Yen(scores), p_m = D_p >=
    Yen(D_p inside m), mask = m and p_m."""
    inside = [np.asarray(b) > 0 for b in brains]
    values = np.concatenate([s[b] for s, b in zip(scores, inside, strict=True)])
    low, high = float(values.min()), float(values.max())
    span = high - low if high > low else 1.0
    normalised = [np.where(b, (s - low) / span, 0.0) for s, b in zip(scores, inside, strict=True)]
    score_threshold = yen_threshold(np.concatenate([n[b] for n, b in zip(normalised, inside,
                                                                         strict=True)]))
    flagged = [(n >= score_threshold) & b for n, b in zip(normalised, inside, strict=True)]
    candidates = np.concatenate([p[m] for p, m in zip(pixels, flagged, strict=True)])
    pixel_threshold = (yen_threshold(candidates) if candidates.size > 1
                       and candidates.max() > candidates.min() else float("inf"))
    masks = [m & (p >= pixel_threshold) for p, m in zip(pixels, flagged, strict=True)]
    return YenSegmentation(masks, score_threshold, pixel_threshold,
                           low + score_threshold * span)

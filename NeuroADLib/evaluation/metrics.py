"""Evaluation metrics for voxel-wise anomaly maps, lesion detection, reconstructions and cohorts.

Every function takes plain numpy arrays (any shape; `labels` and masks are read as booleans,
nonzero = True) and returns Python floats, so the numbers can go straight into a results table.
Only numpy, scipy and scikit-image are used; the tests check each metric against
scikit-learn or scipy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage, stats
from skimage.metrics import structural_similarity


def _voxels(
    scores: np.ndarray, labels: np.ndarray, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Scores (float) and labels (bool) as 1-D arrays, restricted to `mask` when given."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in shape")
    if mask is None:
        return scores.ravel(), labels.ravel()
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != scores.shape:
        raise ValueError(f"mask {mask.shape} and scores {scores.shape} differ in shape")
    return scores[mask], labels[mask]


def _rank_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """AUROC = P(score of a positive > score of a negative) + 0.5 P(tie), from the
    Mann-Whitney U statistic; average ranks count each tie as half a win."""
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both positive and negative samples; labels have one class")
    ranks = stats.rankdata(scores)
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def _positive_counts(
    scores: np.ndarray, labels: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """True- and false-positive counts of the prediction `scores >= t` for every t in
    `thresholds`, from one sort and cumulative sums instead of one pass per threshold."""
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    # positives_below[i]: lesion voxels among the i lowest scores.
    positives_below = np.concatenate([[0], np.cumsum(labels[order])])
    first_predicted = np.searchsorted(sorted_scores, thresholds, side="left")
    true_pos = positives_below[-1] - positives_below[first_predicted]
    false_pos = (scores.size - first_predicted) - true_pos
    return true_pos, false_pos


def voxel_auroc(
    scores: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None
) -> float:
    """Area under the ROC curve over voxels (inside `mask` if given): threshold-free
    separation of lesion from healthy voxels."""
    return _rank_auroc(*_voxels(scores, labels, mask))


def average_precision(
    scores: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None
) -> float:
    """Average precision, sum_n (R_n - R_{n-1}) P_n over the distinct scores from high to low,
    as sklearn.metrics.average_precision_score defines it; unlike AUROC it is not inflated by
    the huge number of easy healthy voxels."""
    scores, labels = _voxels(scores, labels, mask)
    n_pos = int(labels.sum())
    if n_pos == 0:
        raise ValueError("average precision needs at least one positive voxel")
    thresholds = np.unique(scores)[::-1]
    true_pos, false_pos = _positive_counts(scores, labels, thresholds)
    precision = true_pos / (true_pos + false_pos)
    recall_gain = np.diff(true_pos, prepend=0) / n_pos
    return float(np.sum(recall_gain * precision))


def dice(prediction: np.ndarray, labels: np.ndarray) -> float:
    """Dice overlap 2|P & L| / (|P| + |L|) of two binary masks; 1.0 when both are empty
    (nothing to find and nothing found)."""
    prediction = np.asarray(prediction, dtype=bool)
    labels = np.asarray(labels, dtype=bool)
    if prediction.shape != labels.shape:
        raise ValueError(f"prediction {prediction.shape} and labels {labels.shape} differ")
    total = int(prediction.sum()) + int(labels.sum())
    return 1.0 if total == 0 else 2 * int(np.sum(prediction & labels)) / total


def _ratio(numerator: int, denominator: int) -> float:
    """numerator / denominator, 0.0 when the denominator is 0 (scikit-learn's convention)."""
    return numerator / denominator if denominator else 0.0


def confusion_at_threshold(
    scores: np.ndarray, labels: np.ndarray, threshold: float, mask: np.ndarray | None = None
) -> dict[str, float]:
    """Dice, precision, recall and false-positive rate of the prediction `scores >= threshold`
    (inside `mask` if given). An undefined ratio (0/0) is 0.0, except Dice, which is 1.0 when
    both prediction and labels are empty."""
    scores, labels = _voxels(scores, labels, mask)
    predicted = scores >= threshold
    true_pos = int(np.sum(predicted & labels))
    false_pos = int(np.sum(predicted & ~labels))
    false_neg = int(np.sum(~predicted & labels))
    n_neg = labels.size - int(labels.sum())
    errors_and_hits = 2 * true_pos + false_pos + false_neg
    return {
        "dice": 1.0 if errors_and_hits == 0 else 2 * true_pos / errors_and_hits,
        "precision": _ratio(true_pos, true_pos + false_pos),
        "recall": _ratio(true_pos, true_pos + false_neg),
        "fpr": _ratio(false_pos, n_neg),
    }


def max_dice(
    scores: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray | None = None,
    n_thresholds: int | None = None,
) -> tuple[float, float]:
    """ORACLE metric, for evaluation only: the best Dice of `scores >= t` over all thresholds t,
    and the (lowest) t achieving it. The threshold is chosen with the lesion labels, so it is an
    upper bound that cannot be used to segment new scans.

    With `n_thresholds=None` the search is exact over every distinct score value; with an
    integer it covers `n_thresholds` evenly spaced values from the lowest to the highest score,
    the coarse grid some publications use.
    """
    scores, labels = _voxels(scores, labels, mask)
    n_pos = int(labels.sum())
    if n_pos == 0:
        raise ValueError("max Dice needs at least one lesion voxel")
    if n_thresholds is None:
        thresholds = np.unique(scores)
    else:
        thresholds = np.linspace(scores.min(), scores.max(), n_thresholds)
    true_pos, false_pos = _positive_counts(scores, labels, thresholds)
    dices = 2 * true_pos / (true_pos + false_pos + n_pos)
    best = int(np.argmax(dices))
    return float(dices[best]), float(thresholds[best])


def global_max_dice(
    list_of_scores: Sequence[np.ndarray],
    list_of_labels: Sequence[np.ndarray],
    masks: Sequence[np.ndarray] | None = None,
    n_thresholds: int | None = None,
) -> tuple[float, float]:
    """ORACLE metric, for evaluation only: `max_dice` over the pooled voxels of many volumes
    with one threshold shared by all of them (as reported for whole test sets)."""
    if masks is None:
        masks = [None] * len(list_of_scores)
    pooled = [
        _voxels(s, lab, m)
        for s, lab, m in zip(list_of_scores, list_of_labels, masks, strict=True)
    ]
    scores = np.concatenate([s for s, _ in pooled])
    labels = np.concatenate([lab for _, lab in pooled])
    return max_dice(scores, labels, n_thresholds=n_thresholds)


def lesion_detection_rate(
    prediction: np.ndarray, labels: np.ndarray, min_overlap_voxels: int = 1
) -> float:
    """Fraction of lesions (26-connected components of `labels`) that the binary `prediction`
    overlaps by at least `min_overlap_voxels` voxels: small lesions count as much as big ones."""
    prediction = np.asarray(prediction, dtype=bool)
    labels = np.asarray(labels, dtype=bool)
    if prediction.shape != labels.shape:
        raise ValueError(f"prediction {prediction.shape} and labels {labels.shape} differ")
    full_connectivity = ndimage.generate_binary_structure(labels.ndim, labels.ndim)
    components, n_lesions = ndimage.label(labels, structure=full_connectivity)
    if n_lesions == 0:
        raise ValueError("labels contain no lesion")
    overlap = np.bincount(components[prediction], minlength=n_lesions + 1)[1:]
    return float(np.mean(overlap >= min_overlap_voxels))


def healthy_false_positive_fraction(prediction: np.ndarray, brain_mask: np.ndarray) -> float:
    """Fraction of brain voxels flagged in a scan without lesions: every flag is a false alarm."""
    prediction = np.asarray(prediction, dtype=bool)
    brain_mask = np.asarray(brain_mask, dtype=bool)
    if not brain_mask.any():
        raise ValueError("brain mask is empty")
    return float(prediction[brain_mask].mean())


def l1_ratio(residual: np.ndarray, labels: np.ndarray, brain_mask: np.ndarray) -> float:
    """Mean |residual| in healthy brain voxels divided by mean |residual| in lesion voxels of
    the brain: below 1 when the model reconstructs healthy tissue better than lesions."""
    residual = np.abs(np.asarray(residual, dtype=np.float64))
    labels = np.asarray(labels, dtype=bool)
    brain_mask = np.asarray(brain_mask, dtype=bool)
    healthy = brain_mask & ~labels
    lesion = brain_mask & labels
    if not healthy.any() or not lesion.any():
        raise ValueError("l1 ratio needs both healthy and lesion voxels inside the brain mask")
    return float(residual[healthy].mean() / residual[lesion].mean())


def mae_psnr_ssim(
    image: np.ndarray, reference: np.ndarray, mask: np.ndarray, data_range: float = 1.0
) -> dict[str, float]:
    """Reconstruction quality inside `mask`: mean absolute error, PSNR
    10 log10(data_range^2 / MSE) (inf for a perfect match), and the mean of skimage's local
    SSIM map (computed on the whole volumes, so windows see context outside the mask)."""
    image = np.asarray(image, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if not image.shape == reference.shape == mask.shape:
        raise ValueError(f"image {image.shape}, reference {reference.shape} and mask "
                         f"{mask.shape} differ in shape")
    if not mask.any():
        raise ValueError("mask is empty")
    difference = image[mask] - reference[mask]
    mse = float(np.mean(difference**2))
    psnr = np.inf if mse == 0 else 10 * np.log10(data_range**2 / mse)
    _, ssim_map = structural_similarity(image, reference, data_range=data_range, full=True)
    return {
        "mae": float(np.mean(np.abs(difference))),
        "psnr": float(psnr),
        "ssim": float(ssim_map[mask].mean()),
    }


def subject_auroc(scores_healthy: np.ndarray, scores_disease: np.ndarray) -> float:
    """Subject-level AUROC: how well one score per scan separates diseased from healthy
    subjects (diseased = positive class)."""
    healthy = np.asarray(scores_healthy, dtype=np.float64).ravel()
    disease = np.asarray(scores_disease, dtype=np.float64).ravel()
    scores = np.concatenate([healthy, disease])
    labels = np.concatenate([np.zeros(healthy.size, bool), np.ones(disease.size, bool)])
    return _rank_auroc(scores, labels)


def welch_t_test(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Welch's t statistic for mean(a) - mean(b) and its two-sided p-value, with
    Welch-Satterthwaite degrees of freedom: no equal-variance assumption between groups."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.size < 2 or b.size < 2:
        raise ValueError("Welch's t-test needs at least two values per group")
    var_mean_a = a.var(ddof=1) / a.size
    var_mean_b = b.var(ddof=1) / b.size
    statistic = (a.mean() - b.mean()) / np.sqrt(var_mean_a + var_mean_b)
    dof = (var_mean_a + var_mean_b) ** 2 / (
        var_mean_a**2 / (a.size - 1) + var_mean_b**2 / (b.size - 1)
    )
    return float(statistic), float(2 * stats.t.sf(abs(statistic), dof))


def pearson(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Pearson correlation r and its two-sided p-value from t = r sqrt((n-2) / (1-r^2)),
    which follows Student's t with n-2 degrees of freedom when there is no correlation."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.size != b.size or a.size < 3:
        raise ValueError("pearson needs two samples of equal length, at least 3")
    a_centred = a - a.mean()
    b_centred = b - b.mean()
    r = np.sum(a_centred * b_centred) / np.sqrt(np.sum(a_centred**2) * np.sum(b_centred**2))
    r = float(np.clip(r, -1.0, 1.0))
    if abs(r) == 1.0:
        return r, 0.0
    t_statistic = r * np.sqrt((a.size - 2) / (1 - r**2))
    return r, float(2 * stats.t.sf(abs(t_statistic), a.size - 2))


def mean_with_ci(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and its Student-t confidence interval (low, high), for reporting a metric over
    a small number of subjects."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size < 2:
        raise ValueError("a confidence interval needs at least two values")
    mean = float(values.mean())
    standard_error = values.std(ddof=1) / np.sqrt(values.size)
    half_width = float(stats.t.ppf((1 + confidence) / 2, values.size - 1) * standard_error)
    return mean, mean - half_width, mean + half_width

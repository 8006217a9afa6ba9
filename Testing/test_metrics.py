"""Evaluation metrics against independent references (scikit-learn, scipy, brute force, closed
forms) on seeded random volumes, with and without tied scores and masks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage, stats

sklearn = pytest.importorskip("sklearn")
from sklearn import metrics as skm  # noqa: E402

from NeuroADLib.evaluation import (  # noqa: E402
    average_precision,
    confusion_at_threshold,
    dice,
    global_max_dice,
    healthy_false_positive_fraction,
    l1_ratio,
    lesion_detection_rate,
    mae_psnr_ssim,
    max_dice,
    mean_with_ci,
    pearson,
    subject_auroc,
    voxel_auroc,
    welch_t_test,
)

# (seed, tied scores, masked)
CASES = [(0, False, False), (1, True, False), (2, False, True), (3, True, True)]
CASE_IDS = ["plain", "ties", "mask", "ties+mask"]


def assert_close(ours, reference, tolerance: float) -> None:
    difference = float(np.max(np.abs(np.subtract(ours, reference, dtype=np.float64))))
    assert difference <= tolerance, f"max |ours - reference| = {difference:.3g} > {tolerance}"


def random_volume(seed: int, ties: bool, masked: bool, shape=(10, 12, 14)):
    """Scores that are higher in lesion voxels (so metrics are far from trivial); with `ties`
    they are rounded onto a coarse grid, with `masked` a random mask is returned."""
    rng = np.random.default_rng(seed)
    labels = rng.random(shape) < 0.15
    scores = rng.normal(size=shape) + 1.5 * labels
    if ties:
        scores = np.round(scores * 4) / 4
    mask = rng.random(shape) < 0.7 if masked else None
    return scores, labels, mask


def inside(array: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    return array.ravel() if mask is None else array[mask]


def brute_force_max_dice(scores, labels, thresholds):
    """Best Dice of `scores >= t`, one threshold at a time (the lowest t wins ties)."""
    best_dice, best_threshold = -1.0, None
    for threshold in thresholds:
        predicted = scores >= threshold
        value = 2 * np.sum(predicted & labels) / (np.sum(predicted) + np.sum(labels))
        if value > best_dice:
            best_dice, best_threshold = value, threshold
    return best_dice, best_threshold


@pytest.mark.parametrize(("seed", "ties", "masked"), CASES, ids=CASE_IDS)
def test_voxel_auroc_and_average_precision_match_sklearn(seed, ties, masked):
    scores, labels, mask = random_volume(seed, ties, masked)
    y_true, y_score = inside(labels, mask), inside(scores, mask)
    assert_close(voxel_auroc(scores, labels, mask), skm.roc_auc_score(y_true, y_score), 1e-10)
    assert_close(
        average_precision(scores, labels, mask),
        skm.average_precision_score(y_true, y_score),
        1e-10,
    )


def test_auroc_rejects_a_single_class():
    with pytest.raises(ValueError, match="one class"):
        voxel_auroc(np.arange(10.0), np.zeros(10, bool))
    with pytest.raises(ValueError, match="one class"):
        subject_auroc([], [1.0, 2.0])


def test_dice_matches_f1_score():
    rng = np.random.default_rng(4)
    prediction, labels = rng.random((2, 8, 9, 10)) < 0.3
    assert_close(dice(prediction, labels), skm.f1_score(labels.ravel(), prediction.ravel()), 1e-10)
    empty = np.zeros((3, 4, 5), bool)
    assert dice(empty, empty) == skm.f1_score(empty.ravel(), empty.ravel(), zero_division=1.0)
    assert dice(empty, labels[:3, :4, :5]) == 0.0


@pytest.mark.parametrize(("seed", "ties", "masked"), CASES, ids=CASE_IDS)
def test_confusion_at_threshold_matches_sklearn(seed, ties, masked):
    scores, labels, mask = random_volume(seed, ties, masked)
    threshold = float(np.median(scores))  # a tied score when `ties`: checks `>=`
    result = confusion_at_threshold(scores, labels, threshold, mask)
    y_true, y_pred = inside(labels, mask), inside(scores, mask) >= threshold
    tn, fp, _, _ = skm.confusion_matrix(y_true, y_pred).ravel()
    reference = [
        skm.f1_score(y_true, y_pred),
        skm.precision_score(y_true, y_pred),
        skm.recall_score(y_true, y_pred),
        fp / (fp + tn),
    ]
    ours = [result[key] for key in ("dice", "precision", "recall", "fpr")]
    assert_close(ours, reference, 1e-10)


@pytest.mark.parametrize(("seed", "ties", "masked"), CASES, ids=CASE_IDS)
def test_max_dice_matches_brute_force(seed, ties, masked):
    scores, labels, mask = random_volume(seed, ties, masked, shape=(6, 7, 8))
    y_true, y_score = inside(labels, mask), inside(scores, mask)
    exact = max_dice(scores, labels, mask)
    reference = brute_force_max_dice(y_score, y_true, np.unique(y_score))
    assert_close(exact, reference, 1e-10)
    grid = np.linspace(y_score.min(), y_score.max(), 25)
    coarse = max_dice(scores, labels, mask, n_thresholds=25)
    assert_close(coarse, brute_force_max_dice(y_score, y_true, grid), 1e-10)
    assert coarse[0] <= exact[0]


def test_global_max_dice_shares_one_threshold_across_volumes():
    volumes = [random_volume(seed, seed % 2 == 1, True, shape=(5, 6, 7)) for seed in range(3)]
    scores, labels, masks = zip(*volumes, strict=True)
    pooled_scores = np.concatenate([s[m] for s, m in zip(scores, masks, strict=True)])
    pooled_labels = np.concatenate([lab[m] for lab, m in zip(labels, masks, strict=True)])
    reference = brute_force_max_dice(pooled_scores, pooled_labels, np.unique(pooled_scores))
    assert_close(global_max_dice(scores, labels, masks), reference, 1e-10)
    unmasked = brute_force_max_dice(
        np.concatenate([s.ravel() for s in scores]),
        np.concatenate([lab.ravel() for lab in labels]),
        np.unique(np.concatenate([s.ravel() for s in scores])),
    )
    assert_close(global_max_dice(scores, labels), unmasked, 1e-10)


def test_max_dice_needs_a_lesion():
    with pytest.raises(ValueError, match="lesion"):
        max_dice(np.arange(8.0), np.zeros(8, bool))


def test_lesion_detection_rate_on_known_components():
    labels = np.zeros((12, 12, 12), bool)
    labels[1, 1, 1] = True  # lesion 1: a single voxel
    labels[5, 5, 5] = labels[6, 6, 6] = True  # lesion 2: corner-connected (26, not 6)
    labels[8:11, 8:11, 8:11] = True  # lesion 3: a 3x3x3 block
    assert ndimage.label(labels, structure=np.ones((3, 3, 3)))[1] == 3
    prediction = np.zeros_like(labels)
    prediction[6, 6, 6] = True  # one voxel of lesion 2
    prediction[10, 10, 8:12] = True  # three voxels of lesion 3, one outside it
    prediction[0, 11, 0] = True  # a false positive, which does not matter here
    assert lesion_detection_rate(prediction, labels) == pytest.approx(2 / 3, abs=1e-12)
    assert lesion_detection_rate(prediction, labels, min_overlap_voxels=2) == pytest.approx(
        1 / 3, abs=1e-12
    )
    assert lesion_detection_rate(np.zeros_like(labels), labels) == 0.0
    assert lesion_detection_rate(labels, labels) == 1.0
    with pytest.raises(ValueError, match="no lesion"):
        lesion_detection_rate(prediction, np.zeros_like(labels))


def test_healthy_false_positive_fraction_counts_brain_voxels_only():
    brain = np.zeros((4, 5, 6), bool)
    brain[1:3, 1:4, 1:5] = True  # 24 voxels
    prediction = np.zeros_like(brain)
    prediction[1, 1, 1:4] = True  # 3 flagged in the brain
    prediction[0] = True  # flagged outside the brain: ignored
    assert healthy_false_positive_fraction(prediction, brain) == pytest.approx(3 / 24, abs=1e-12)


def test_l1_ratio_closed_form():
    brain = np.zeros((6, 6, 6), bool)
    brain[1:5, 1:5, 1:5] = True
    labels = np.zeros_like(brain)
    labels[2:4, 2:4, 2:4] = True
    labels[0, 0, 0] = True  # a lesion voxel outside the brain: ignored
    residual = np.full(brain.shape, 100.0)  # outside the brain: ignored
    residual[brain] = np.where(np.indices(brain.shape).sum(0)[brain] % 2, 0.2, -0.2)
    residual[labels & brain] = 0.8
    assert l1_ratio(residual, labels, brain) == pytest.approx(0.25, abs=1e-12)


def test_mae_and_psnr_closed_forms():
    rng = np.random.default_rng(5)
    reference = rng.random((9, 10, 11))
    mask = rng.random(reference.shape) < 0.5
    offset = 0.05
    image = reference + np.where(mask, offset * rng.choice([-1.0, 1.0], reference.shape), 0.3)
    result = mae_psnr_ssim(image, reference, mask, data_range=2.0)
    assert_close([result["mae"], result["psnr"]], [offset, 10 * np.log10(4.0 / offset**2)], 1e-10)
    perfect = mae_psnr_ssim(reference, reference, mask)
    assert perfect["mae"] == 0.0 and perfect["psnr"] == np.inf
    assert perfect["ssim"] == pytest.approx(1.0, abs=1e-12)


def reference_ssim_map(x: np.ndarray, y: np.ndarray, data_range: float, window: int = 7):
    """SSIM of Wang et al. (2004) with a uniform window and sample covariances, which are the
    defaults of skimage.metrics.structural_similarity, written out with scipy filters."""
    def local_mean(array):
        return ndimage.uniform_filter(array, size=window)

    sample_correction = window**x.ndim / (window**x.ndim - 1)
    mean_x, mean_y = local_mean(x), local_mean(y)
    var_x = sample_correction * (local_mean(x * x) - mean_x**2)
    var_y = sample_correction * (local_mean(y * y) - mean_y**2)
    cov_xy = sample_correction * (local_mean(x * y) - mean_x * mean_y)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * mean_x * mean_y + c1) * (2 * cov_xy + c2)) / (
        (mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2)
    )


def test_ssim_matches_an_independent_implementation():
    rng = np.random.default_rng(6)
    reference = ndimage.gaussian_filter(rng.random((16, 17, 18)), 1.5)
    image = reference + 0.02 * rng.normal(size=reference.shape)
    mask = rng.random(reference.shape) < 0.4
    expected = reference_ssim_map(image, reference, data_range=1.0)[mask].mean()
    assert_close(mae_psnr_ssim(image, reference, mask)["ssim"], expected, 1e-6)


def test_subject_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(7)
    healthy = np.round(rng.normal(0.0, 1.0, 23), 1)
    disease = np.round(rng.normal(0.8, 1.0, 17), 1)
    labels = np.r_[np.zeros(healthy.size), np.ones(disease.size)]
    expected = skm.roc_auc_score(labels, np.r_[healthy, disease])
    assert_close(subject_auroc(healthy, disease), expected, 1e-10)


def test_welch_t_test_matches_scipy():
    rng = np.random.default_rng(8)
    a, b = rng.normal(0.0, 1.0, 15), rng.normal(0.7, 2.5, 9)
    expected = stats.ttest_ind(a, b, equal_var=False)
    assert_close(welch_t_test(a, b), [expected.statistic, expected.pvalue], 1e-10)


def test_pearson_matches_scipy():
    rng = np.random.default_rng(9)
    a = rng.normal(size=30)
    b = 0.4 * a + rng.normal(size=30)
    expected = stats.pearsonr(a, b)
    assert_close(pearson(a, b), [expected.statistic, expected.pvalue], 1e-10)
    r, p = pearson(a, 2 * a + 1)
    assert r == pytest.approx(1.0, abs=1e-12) and p < 1e-100


@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_mean_with_ci_matches_t_interval(confidence):
    values = np.random.default_rng(10).normal(3.0, 2.0, 12)
    mean = values.mean()
    low, high = stats.t.interval(confidence, values.size - 1, loc=mean, scale=stats.sem(values))
    assert_close(mean_with_ci(values, confidence), [mean, low, high], 1e-10)

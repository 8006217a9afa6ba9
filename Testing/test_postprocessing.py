"""Post-processing filters, thresholds and subject scores against independent references
(scipy, scikit-image, numpy, brute-force loops, hand-built volumes) on small seeded volumes."""

from __future__ import annotations

import inspect
import itertools
import math

import numpy as np
import pytest
from scipy import ndimage
from skimage.filters import threshold_yen
from skimage.morphology import remove_small_objects

from NeuroADLib.postprocessing import (
    ReferenceStatistics,
    abnormality_index,
    binarize,
    clip_and_rescale,
    erode_brain_mask,
    gaussian_smooth,
    healthy_calibrated_threshold,
    index_zscore,
    max_score,
    mean_score,
    median_filter,
    percentile_threshold,
    quantile_mean,
    remove_small_components,
    shift_aligned_residual,
    top_k_mean,
    yen_threshold,
    zscore_map,
)

SHAPE = (9, 10, 11)


def random_map_and_mask(seed: int, ties: bool = False, shape=SHAPE):
    """A skewed (exponential) map, rounded onto a coarse grid with `ties`, and a random mask."""
    rng = np.random.default_rng(seed)
    anomaly_map = rng.exponential(size=shape)
    if ties:
        anomaly_map = np.round(anomaly_map * 4) / 4
    return anomaly_map, rng.random(shape) < 0.7


# --- filters -----------------------------------------------------------------------------


def test_median_filter_equals_scipy():
    volume, _ = random_map_and_mask(0)
    np.testing.assert_array_equal(median_filter(volume), ndimage.median_filter(volume, size=5))
    np.testing.assert_array_equal(
        median_filter(volume, size=3), ndimage.median_filter(volume, size=3)
    )


def test_gaussian_smooth_does_not_truncate_integers():
    volume = np.zeros(SHAPE, dtype=np.int16)
    volume[4, 5, 5] = 1
    smoothed = gaussian_smooth(volume, 1.0)
    np.testing.assert_allclose(smoothed, ndimage.gaussian_filter(volume.astype(float), 1.0))
    assert 0 < smoothed[4, 5, 5] < 1


def test_erode_brain_mask_shrinks_a_box_by_one_voxel_per_iteration():
    mask = np.zeros((20, 20, 20), bool)
    mask[2:18, 3:17, 4:16] = True
    expected = np.zeros_like(mask)
    expected[5:15, 6:14, 7:13] = True
    np.testing.assert_array_equal(erode_brain_mask(mask, iterations=3), expected)
    np.testing.assert_array_equal(erode_brain_mask(mask, iterations=0), mask)
    # 6-connectivity: a voxel survives one erosion when its 6 face neighbours are in the mask.
    cross = np.zeros((3, 3, 3), bool)
    cross[1, 1, :] = cross[1, :, 1] = cross[:, 1, 1] = True
    assert erode_brain_mask(cross, iterations=1)[1, 1, 1]


def test_remove_small_components_on_hand_built_volume():
    binary = np.zeros((13, 13, 13), bool)
    binary[0, 0, 0] = True  # 1 voxel
    binary[3, 0, 0:7] = True  # 7 voxels: dropped
    binary[6, 0, 0:8] = True  # 8 voxels: kept
    binary[0:2, 5:7, 5:7] = True  # 8 voxels: kept
    # Two 2x2 plates meeting only at the corner (9, 10, 10)-(10, 11, 11): one 8-voxel
    # component with the full 3x3x3 connectivity, two 4-voxel ones with faces or edges.
    binary[9, 9:11, 9:11] = True
    binary[10, 11:13, 11:13] = True
    kept = remove_small_components(binary, min_size=8)
    expected = binary.copy()
    expected[0, 0, 0] = False
    expected[3, 0, 0:7] = False
    np.testing.assert_array_equal(kept, expected)
    for connectivity in (1, 2):
        expected[9:11] = False
        np.testing.assert_array_equal(
            remove_small_components(binary, min_size=8, connectivity=connectivity), expected
        )
    assert remove_small_components(binary, min_size=1).sum() == binary.sum()


def skimage_remove_small_objects(binary, min_size, connectivity):
    """skimage's reference; from 0.26 on it takes `max_size` (largest size removed)."""
    if "max_size" in inspect.signature(remove_small_objects).parameters:
        return remove_small_objects(binary, max_size=min_size - 1, connectivity=connectivity)
    return remove_small_objects(binary, min_size=min_size, connectivity=connectivity)


@pytest.mark.parametrize("connectivity", [1, 2, 3])
@pytest.mark.parametrize("min_size", [2, 8, 20])
def test_remove_small_components_equals_skimage(connectivity, min_size):
    binary = np.random.default_rng(connectivity + min_size).random((16, 17, 18)) < 0.2
    np.testing.assert_array_equal(
        remove_small_components(binary, min_size, connectivity),
        skimage_remove_small_objects(binary, min_size, connectivity),
    )


def brute_force_shift_residual(image, reconstruction, k):
    """min over shifts s of |image(v) - reconstruction(clamp(v + s))|, one voxel at a time."""
    residual = np.empty(image.shape)
    upper = np.array(image.shape) - 1
    for v in itertools.product(*(range(n) for n in image.shape)):
        residual[v] = min(
            abs(image[v] - reconstruction[tuple(np.clip(np.add(v, s), 0, upper))])
            for s in itertools.product(range(-k, k + 1), repeat=3)
        )
    return residual


@pytest.mark.parametrize("max_shift", [0, 1, 2])
def test_shift_aligned_residual_equals_brute_force(max_shift):
    rng = np.random.default_rng(max_shift)
    image, reconstruction = rng.normal(size=(2, 4, 5, 6))
    np.testing.assert_allclose(
        shift_aligned_residual(image, reconstruction, max_shift),
        brute_force_shift_residual(image, reconstruction, max_shift),
        rtol=0, atol=1e-12,
    )


def test_shift_aligned_residual_absorbs_a_one_voxel_misalignment():
    image = np.random.default_rng(0).normal(size=(8, 9, 10))
    # reconstruction(v + s) == image(v) for the shift s = (1, -1, 1), away from the borders.
    reconstruction = np.roll(image, (1, -1, 1), axis=(0, 1, 2))
    interior = (slice(1, -1),) * 3
    aligned = shift_aligned_residual(image, reconstruction, max_shift=1)
    np.testing.assert_array_equal(aligned[interior], 0.0)
    unaligned = shift_aligned_residual(image, reconstruction, max_shift=0)
    np.testing.assert_array_equal(unaligned, np.abs(image - reconstruction))
    assert np.all(unaligned[interior] > 0)


def test_clip_and_rescale_maps_the_mask_onto_0_1():
    volume, mask = random_map_and_mask(1)
    volume = volume - 0.3  # some negative values, clipped to 0
    rescaled = clip_and_rescale(volume, clip_max=0.25, mask=mask)
    assert rescaled[mask].min() == 0.0 and rescaled[mask].max() == 1.0
    np.testing.assert_array_equal(rescaled[~mask], 0.0)
    np.testing.assert_array_equal(rescaled[mask & (volume >= 0.25)], 1.0)
    np.testing.assert_array_equal(rescaled[mask & (volume <= 0)], 0.0)
    middle = mask & (volume > 0) & (volume < 0.25)
    np.testing.assert_allclose(rescaled[middle], volume[middle] / 0.25)
    unclipped = clip_and_rescale(np.abs(volume))
    np.testing.assert_allclose(unclipped.max(), 1.0)
    np.testing.assert_array_equal(clip_and_rescale(np.full(SHAPE, 3.0)), 0.0)


# --- thresholds --------------------------------------------------------------------------


@pytest.mark.parametrize("ties", [False, True])
def test_percentile_and_yen_equal_numpy_and_skimage_on_in_mask_values(ties):
    anomaly_map, mask = random_map_and_mask(2, ties)
    for q in (50, 95, 99.5):
        assert percentile_threshold(anomaly_map, q, mask) == np.percentile(anomaly_map[mask], q)
    assert percentile_threshold(anomaly_map, 95) == np.percentile(anomaly_map, 95)
    assert yen_threshold(anomaly_map, mask) == threshold_yen(anomaly_map[mask])
    # The mask matters: bright values outside it must not move the threshold.
    brighter = np.where(mask, anomaly_map, 100.0)
    assert yen_threshold(brighter, mask) == yen_threshold(anomaly_map, mask)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("fpr", [0.0, 0.001, 0.01, 0.05, 0.3])
def test_healthy_calibrated_threshold_is_exact(ties, fpr):
    subjects = [random_map_and_mask(seed, ties) for seed in range(3)]
    maps, masks = zip(*subjects, strict=True)
    pooled = np.concatenate([m[mask] for m, mask in subjects])
    threshold = healthy_calibrated_threshold(maps, masks, fpr)
    distinct = np.unique(pooled)
    # Reference: scan the sorted distinct pooled values for the first one that qualifies.
    reference = next(t for t in distinct if np.mean(pooled > t) <= fpr)
    assert threshold == reference
    assert np.mean(pooled > threshold) <= fpr
    lower = distinct[distinct < threshold]
    if lower.size:
        assert np.mean(pooled > lower[-1]) > fpr


def test_healthy_calibrated_threshold_survives_float_rounding_of_fpr_times_n():
    values = np.arange(100.0)  # 0.29 * 100 == 28.999999999999996 in floating point
    threshold = healthy_calibrated_threshold([values], [np.ones(100, bool)], fpr=0.29)
    assert threshold == 70.0 and np.sum(values > threshold) == 29


def test_binarize_is_strict_and_masked():
    anomaly_map, mask = random_map_and_mask(3, ties=True)
    segmentation = binarize(anomaly_map, 1.0, mask)
    assert segmentation.dtype == bool
    np.testing.assert_array_equal(segmentation, (anomaly_map > 1.0) & mask)
    assert np.any(anomaly_map == 1.0) and not segmentation[anomaly_map == 1.0].any()
    np.testing.assert_array_equal(binarize(anomaly_map, 1.0), anomaly_map > 1.0)


# --- subject scores ----------------------------------------------------------------------


def healthy_cohort(n_subjects=6, seed=4, shape=(6, 7, 8)):
    rng = np.random.default_rng(seed)
    maps = rng.gamma(2.0, 0.5, size=(n_subjects, *shape))
    masks = rng.random((n_subjects, *shape)) < 0.8
    return maps, masks


def test_reference_statistics_and_zscore_map_closed_form():
    maps, _ = healthy_cohort()
    maps[:, 0, 0, :] = 1.0  # a row where healthy maps agree exactly: std at the relative floor
    full = np.ones(maps.shape, bool)
    reference = ReferenceStatistics.from_healthy_maps(maps, full, top_fraction=0.05)
    stds = maps.std(axis=0)
    expected_std = np.maximum(stds, 0.1 * np.median(stds[stds > 0]))
    assert np.all(expected_std[0, 0] > 0)
    np.testing.assert_allclose(reference.mean, maps.mean(axis=0))
    np.testing.assert_allclose(reference.std, expected_std)
    new_map = np.random.default_rng(5).gamma(2.0, 0.5, size=maps.shape[1:])
    np.testing.assert_allclose(
        zscore_map(new_map, reference), (new_map - maps.mean(axis=0)) / expected_std
    )
    indices = [
        abnormality_index((m - maps.mean(axis=0)) / expected_std, mask, 0.05)
        for m, mask in zip(maps, full, strict=True)
    ]
    assert reference.index_mean == pytest.approx(np.mean(indices))
    assert reference.index_std == pytest.approx(np.std(indices))
    assert index_zscore(reference.index_mean, reference) == 0.0
    assert index_zscore(reference.index_mean + 2 * reference.index_std, reference) == (
        pytest.approx(2.0)
    )


def test_reference_statistics_use_only_covering_masks():
    maps, masks = healthy_cohort()  # 6 subjects: a voxel needs 3 covering masks
    masks[:, 0, 0, 0] = False  # covered by no subject
    masks[:, 1, 1, 1] = [True, False, False, False, False, False]  # by one: no evidence
    masks[:, 2, 2, 2] = [True, True, False, False, False, False]  # by two: still too few
    masks[:, 3, 3, 3] = [True, True, True, False, False, False]  # by three: enough
    maps[:3, 3, 3, 3] = 0.5  # ... but they agree exactly: std at the relative floor
    reference = ReferenceStatistics.from_healthy_maps(maps, masks)
    supported = masks.sum(axis=0) >= 3
    stds = [maps[(slice(None), *v)][masks[(slice(None), *v)]].std()
            for v in itertools.product(*(range(n) for n in maps.shape[1:])) if supported[v]]
    floor = 0.1 * np.median([s for s in stds if s > 0])
    for v in itertools.product(*(range(n) for n in maps.shape[1:])):
        covering = maps[(slice(None), *v)][masks[(slice(None), *v)]]
        assert reference.mean[v] == pytest.approx(covering.mean() if covering.size else 0.0)
        if supported[v]:
            assert reference.std[v] == pytest.approx(max(covering.std(), floor))
        else:
            assert reference.std[v] == np.inf
    assert reference.std[3, 3, 3] == pytest.approx(floor)
    z = zscore_map(maps[0] + 1.0, reference)
    assert z[0, 0, 0] == z[1, 1, 1] == z[2, 2, 2] == 0.0 and np.all(np.isfinite(z))
    assert np.max(np.abs(z)) <= (maps.max() + 1.0) / floor


def test_a_sparse_healthy_map_keeps_a_useful_std_floor():
    """Healthy maps that are exactly 0 in most voxels (AutoDDPM's masked map): the floor comes
    from the voxels where they vary, so a small value where healthy maps were 0 is not read as
    thousands of standard deviations."""
    maps, _ = healthy_cohort()
    sparse = np.zeros_like(maps)
    sparse[:, :2] = maps[:, :2]  # the healthy maps vary on a few voxels only
    full = np.ones(maps.shape, bool)
    reference = ReferenceStatistics.from_healthy_maps(sparse, full)
    varying = sparse.std(axis=0)[:2]
    floor = 0.1 * np.median(varying[varying > 0])
    assert reference.std[2:].min() == pytest.approx(floor)
    probe = np.zeros(maps.shape[1:])
    probe[-1] = np.median(varying)  # a typical healthy deviation where healthy maps were 0
    assert zscore_map(probe, reference).max() == pytest.approx(np.median(varying) / floor)


@pytest.mark.parametrize("top_fraction", [0.01, 0.05, 0.37, 1.0])
def test_abnormality_index_equals_manual_sort(top_fraction):
    z_map, mask = random_map_and_mask(6, ties=True)
    z_map = z_map - 1.0
    descending = np.sort(z_map[mask])[::-1]
    count = max(1, math.ceil(top_fraction * descending.size))
    assert abnormality_index(z_map, mask, top_fraction) == pytest.approx(
        descending[:count].mean()
    )


def test_image_level_scores_equal_manual_values():
    anomaly_map, mask = random_map_and_mask(7, ties=True)
    values = anomaly_map[mask]
    descending = np.sort(values)[::-1]
    assert max_score(anomaly_map, mask) == descending[0]
    assert max_score(anomaly_map) == anomaly_map.max()
    assert mean_score(anomaly_map, mask) == pytest.approx(values.mean())
    for k in (1, 10, values.size):
        assert top_k_mean(anomaly_map, mask, k) == pytest.approx(descending[:k].mean())
    with pytest.raises(ValueError):
        top_k_mean(anomaly_map, mask, values.size + 1)
    for q in (0.0, 0.5, 0.9, 0.99, 1.0):
        cutoff = np.quantile(values, q)
        kept = [v for v in values if v >= cutoff]
        assert quantile_mean(anomaly_map, mask, q) == pytest.approx(sum(kept) / len(kept))
    assert quantile_mean(anomaly_map, mask, 1.0) == descending[0]

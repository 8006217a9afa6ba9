"""Intensity harmonisation (profile matching to the cohort's mean) and acquisition augmentation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ellipsoid_brain, fabricated_cohort
from scipy import ndimage

from NeuroADLib.errors import ModelError
from NeuroADLib.methods.base import Calibration, LoadedMethod, load_method
from NeuroADLib.pipeline import out_of_distribution_report
from NeuroADLib.postprocessing import ReferenceStatistics
from NeuroADLib.preprocessing.harmonisation import (
    HarmonisationConfig,
    IntensityStandard,
    healthy_ranges,
    intensity_profile,
    match_noise,
    match_sharpness,
    noise_level,
    out_of_distribution,
    sharpness,
    smooth_in_brain,
)
from NeuroADLib.synthesis.acquisition import (
    AcquisitionConfig,
    augment_acquisition,
    bias_field,
    sharpen,
    thick_slices,
)

SHAPE = (40, 48, 40)
CONFIG = HarmonisationConfig(profile_sigma_mm=8.0)


def anatomy() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, brain, white-matter core): white matter 0.85 in an inner ellipsoid, grey matter
    0.65 around it, a little texture."""
    brain = ellipsoid_brain(SHAPE)
    grids = np.indices(SHAPE)
    centre = np.array(SHAPE)[:, None, None, None] / 2
    radius = (((grids - centre) / (np.array(SHAPE)[:, None, None, None] * 0.25)) ** 2).sum(0)
    white = radius < 1
    texture = ndimage.gaussian_filter(np.random.default_rng(1).normal(0, 0.02, SHAPE), 1)
    image = (np.where(white, 0.85, 0.65) + texture) * brain
    return image.astype(np.float32), brain, white & brain


def smooth_field(seed: int, amplitude: float) -> np.ndarray:
    return bias_field(SHAPE, amplitude, 20.0, np.random.default_rng(seed)).astype(np.float32)


def priors_from(core: np.ndarray) -> dict[str, np.ndarray]:
    return {"wm": core.astype(np.float32), "gm": np.zeros(SHAPE, np.float32)}


def test_without_a_template_the_regions_come_from_the_cohorts_mean_image():
    image, brain, core = anatomy()
    standard = IntensityStandard.fit([image, image * 1.1], [brain, brain], 2.0, None, CONFIG)
    np.testing.assert_allclose(standard.reference[brain], 1.05 * image[brain], rtol=1e-3)
    assert standard.region.sum() > standard.wm_core.sum() > 0
    assert (standard.wm_core & core).sum() >= 0.9 * core.sum()  # covers the white matter
    assert image[standard.wm_core].mean() > image[standard.gm_core].mean()
    assert not (standard.gm_core & standard.wm_core).any()


def standard_of(images: list[np.ndarray], brain: np.ndarray, core: np.ndarray
                ) -> IntensityStandard:
    return IntensityStandard.fit(images, [brain] * len(images), 2.0, priors_from(core), CONFIG)


def test_profile_matching_removes_a_smooth_field_and_sets_the_level():
    image, brain, core = anatomy()
    standard = standard_of([image * smooth_field(k, 0.05) for k in range(4)], brain, core)
    # another scanner: 30% darker with a strong smooth field
    shifted = image * 0.7 * smooth_field(9, 0.4) * brain
    harmonised, gain = standard.harmonise(shifted, brain)
    inner = ndimage.binary_erosion(brain, iterations=3)
    before = np.abs(shifted[inner] / standard.reference[inner] - 1)
    after = np.abs(harmonised[inner] / standard.reference[inner] - 1)
    assert np.median(after) < 0.02 < 0.15 < np.median(before)
    # the gain is exactly the inverse of the scan's profile against the cohort's mean
    profile, _ = intensity_profile(shifted, brain, standard.reference, standard.region, CONFIG,
                                   2.0)
    np.testing.assert_allclose(gain[brain], 1.0 / profile[brain], rtol=1e-5)
    assert np.all(harmonised[~brain] == 0)


def test_a_focal_lesion_keeps_its_contrast():
    image, brain, core = anatomy()
    standard = standard_of([image], brain, core)
    lesion = np.zeros(SHAPE, bool)
    lesion[18:22, 22:26, 18:22] = True  # 64 voxels of white matter, 40% darker
    lesioned = np.where(lesion, image * 0.6, image).astype(np.float32)
    harmonised, _ = standard.harmonise(lesioned * 1.3, brain)
    ring = ndimage.binary_dilation(lesion, iterations=3) & ~ndimage.binary_dilation(lesion) & core
    contrast = harmonised[lesion].mean() / harmonised[ring].mean()
    assert contrast == pytest.approx(lesioned[lesion].mean() / lesioned[ring].mean(), rel=0.03)


def test_saved_standard_harmonises_exactly_as_the_fitted_one(tmp_path):
    image, brain, core = anatomy()
    standard = standard_of([image * smooth_field(k, 0.1) for k in range(3)], brain, core)
    standard = standard.with_healthy_ranges({"gain_median": [0.9, 1.1]})
    standard.save(tmp_path)
    loaded = IntensityStandard.load(tmp_path)
    scan = image * smooth_field(5, 0.3)
    np.testing.assert_array_equal(loaded.harmonise(scan, brain)[0],
                                  standard.harmonise(scan, brain)[0])
    assert loaded.healthy_ranges == {"gain_median": [0.9, 1.1]}
    assert IntensityStandard.load(tmp_path / "absent") is None


def test_statistics_and_out_of_distribution_checks():
    image, brain, core = anatomy()
    gm_prior = (brain & ~ndimage.binary_dilation(core, iterations=2)).astype(np.float32)
    standard = IntensityStandard.fit([image], [brain], 2.0, {"wm": core.astype(np.float32),
                                                              "gm": gm_prior}, CONFIG)
    scans = [image * s for s in (0.9, 1.0, 1.1)]
    statistics = [standard.statistics(s, *_harmonised(standard, s, brain)) for s in scans]
    assert statistics[1]["contrast_ratio"] == pytest.approx(0.65 / 0.85, abs=0.01)
    assert [s["white_matter_level"] for s in statistics] == pytest.approx(
        [0.85 * f for f in (0.9, 1.0, 1.1)], abs=0.01)
    ranges = healthy_ranges(statistics)
    assert ranges["white_matter_level"][0] == pytest.approx(0.85 * 0.9, abs=0.01)
    dark = image * 0.5
    checks = {c["statistic"]: c for c in out_of_distribution(
        standard.statistics(dark, *_harmonised(standard, dark, brain)), ranges)}
    assert not checks["white_matter_level"]["inside"]
    assert not checks["gain_median"]["inside"]
    assert checks["contrast_ratio"]["inside"]


def _harmonised(standard, scan, brain):
    harmonised, gain = standard.harmonise(scan, brain)
    return harmonised, brain, gain


def test_report_warns_with_numbers_when_the_flagged_share_is_beyond_healthy():
    reference = ReferenceStatistics(np.zeros(SHAPE), np.ones(SHAPE), 1.0, 0.1, 0.01)
    calibration = Calibration(2.0, 0.01, reference, [0.001, 0.02])
    quiet = out_of_distribution_report({"checks": []}, 0.015, calibration)
    loud = out_of_distribution_report({"checks": []}, 0.145, calibration)
    assert quiet["in_distribution"] and not quiet["warnings"]
    assert not loud["in_distribution"]
    assert "14.5%" in loud["warnings"][0] and "0.1%-2.0%" in loud["warnings"][0]


class _Echo:
    """A model whose pseudo-healthy image is its input and whose map is zero."""

    def predict(self, image, brain, subject, on_step=None):
        return np.zeros_like(image), image * brain


def test_pseudo_healthy_image_returns_to_the_scans_own_scale():
    image, brain, core = anatomy()
    standard = standard_of([image], brain, core)
    reference = ReferenceStatistics(np.zeros(SHAPE), np.ones(SHAPE), 1.0, 0.1, 0.01)
    method = LoadedMethod("echo", "t1", _Echo(), Calibration(1.0, 0.01, reference), standard)
    scan = image * 0.7 * smooth_field(3, 0.3)
    prediction = method.run(scan, brain)
    np.testing.assert_allclose(prediction.healthy[brain], scan[brain], rtol=1e-5)
    assert prediction.harmonisation["applied"]
    unharmonised = LoadedMethod("echo", "t1", _Echo(), Calibration(1.0, 0.01, reference))
    assert unharmonised.run(scan, brain).harmonisation == {"applied": False}


def test_augmentation_is_seeded_and_normalised_like_a_preprocessed_scan():
    image, brain, _ = anatomy()
    first, drawn = augment_acquisition(image, brain, 7)
    again, drawn_again = augment_acquisition(image, brain, 7)
    other, _ = augment_acquisition(image, brain, 8)
    np.testing.assert_array_equal(first, again)
    assert drawn == drawn_again and not np.array_equal(first, other)
    assert np.all(first[~brain] == 0) and first.max() <= 1.0
    assert np.percentile(first[brain], 99.5) == pytest.approx(1.0, abs=0.02)
    # probability 0: nothing but the normalisation
    untouched, none = augment_acquisition(image, brain, 7, AcquisitionConfig(probability=0.0))
    assert none == {}
    np.testing.assert_allclose(untouched, np.clip(image / np.percentile(image[brain], 99.5),
                                                  0, 1) * brain, atol=1e-6)


def test_contrast_gamma_moves_the_grey_white_ratio_as_the_closed_form():
    image, brain, _ = anatomy()
    config = AcquisitionConfig(probability=1.0, contrast_gamma=(0.6, 0.6), bias_amplitude=(0, 0),
                               slice_thickness_mm=(2.0, 2.0), blur_sigma_mm=(0, 0),
                               noise_std=(0, 0), bright_rim_fraction=(0, 0))
    out, drawn = augment_acquisition(image, brain, 0, config)
    assert drawn["contrast_gamma"] == 0.6
    grey = brain & (np.abs(image - 0.65) < 0.05)
    white = brain & (np.abs(image - 0.85) < 0.05)
    ratio = np.median(out[grey]) / np.median(out[white])
    assert ratio == pytest.approx((0.65 / 0.85) ** 0.6, abs=0.01)


def test_bias_field_has_the_asked_peak_to_peak_ratio():
    field = bias_field(SHAPE, 0.3, 10.0, np.random.default_rng(0))
    assert field.max() / field.min() == pytest.approx(np.exp(0.3), rel=1e-6)


def test_thick_slices_average_along_the_axial_axis_only():
    rng = np.random.default_rng(0)
    in_plane = np.broadcast_to(rng.random((1, 12, 10)), (30, 12, 10)).copy()
    np.testing.assert_allclose(thick_slices(in_plane, 3.0), in_plane, atol=1e-6)
    ramp = np.broadcast_to(np.arange(30.0)[:, None, None], (30, 12, 10)).copy()
    thick = thick_slices(ramp, 3.0)
    # a linear ramp survives slab averaging and linear resampling in the interior
    np.testing.assert_allclose(thick[3:-4], ramp[3:-4], atol=1.01)
    noisy = rng.random((30, 12, 10))
    assert thick_slices(noisy, 4.0).std(axis=0).mean() < noisy.std(axis=0).mean() / 1.5


def test_sharpen_is_unsharp_masking_inside_the_brain_and_raises_sharpness():
    image, brain, _ = anatomy()
    np.testing.assert_allclose(sharpen(image, brain, 0.0), image, atol=1e-6)
    detail = image - smooth_in_brain(image, brain, 2.0)
    expected = np.clip(image + 1.5 * detail, 0, None) * brain
    np.testing.assert_allclose(sharpen(image, brain, 1.5, 2.0), expected, atol=1e-6)
    levels = [sharpness(sharpen(image, brain, amount, 2.0), brain) for amount in (0, 1, 2)]
    assert levels[0] < levels[1] < levels[2]
    assert not sharpen(image, brain, 2.0)[~brain].any()


def _gaussian_high_pass_gain() -> float:
    """Closed form: the standard deviation of x - G_1(x) for unit white noise in 3D, with
    scipy's kernel (sigma 1, truncated at 4 sigma): sqrt(1 - 2 g_0 + sum g^2) for the separable
    kernel g = w x w x w."""
    offsets = np.arange(-4, 5)
    w = np.exp(-offsets ** 2 / 2.0)
    w /= w.sum()
    g = np.einsum("i,j,k->ijk", w, w, w)
    return float(np.sqrt(1 - 2 * g[4, 4, 4] + (g ** 2).sum()))


def test_noise_level_matches_the_closed_form_for_white_noise_and_ignores_smooth_anatomy():
    shape = (48, 48, 48)
    brain = ellipsoid_brain(shape)
    smooth = ndimage.gaussian_filter(np.random.default_rng(0).random(shape), 6) * brain
    noise = np.random.default_rng(1).normal(0, 1, shape)
    for sigma in (0.02, 0.05):
        assert noise_level(smooth + sigma * noise, brain) == pytest.approx(
            sigma * _gaussian_high_pass_gain(), rel=0.04)
    assert noise_level(smooth, brain) < 0.1 * 0.02 * _gaussian_high_pass_gain()


def test_match_noise_smooths_a_noisy_scan_to_the_ceiling_and_leaves_a_quiet_one_alone():
    image, brain, _ = anatomy()
    noisy = ((image + np.random.default_rng(2).normal(0, 0.06, SHAPE)) * brain).astype(np.float32)
    ceiling = 0.5 * noise_level(noisy, brain)
    matched, sigma = match_noise(noisy, brain, ceiling)
    assert 0 < sigma < 2.0
    assert noise_level(matched, brain) == pytest.approx(ceiling, rel=0.02)
    assert noise_level(smooth_in_brain(noisy, brain, 0.9 * sigma), brain) > ceiling  # smallest
    assert not matched[~brain].any()
    assert matched[brain].mean() == pytest.approx(noisy[brain].mean(), rel=0.02)  # no darkening
    same, none = match_noise(noisy, brain, 2 * noise_level(noisy, brain))
    assert same is noisy and none == 0.0


def test_harmonise_matches_noise_only_with_a_healthy_noise_range_and_reports_it_before():
    image, brain, core = anatomy()
    standard = IntensityStandard.fit([image], [brain], 2.0, priors_from(core), CONFIG)
    noisy = ((image + np.random.default_rng(3).normal(0, 0.06, SHAPE)) * brain).astype(np.float32)
    before = noise_level(noisy, brain)
    assert standard.noise_ceiling is None  # a standard built without the noise range
    plain, gain = standard.harmonise(noisy, brain)
    np.testing.assert_allclose(plain, noisy * gain * brain, rtol=1e-6)
    ceiling = 0.5 * before
    matching = standard.with_healthy_ranges({"noise_level": [0.0, ceiling]})
    matched, gain = matching.harmonise(noisy, brain)
    assert noise_level(matched, brain) < 1.1 * ceiling < before
    statistics = matching.statistics(noisy, matched, brain, gain)
    assert statistics["noise_level"] == pytest.approx(noise_level(plain, brain))
    assert not {c["statistic"]: c for c in out_of_distribution(
        statistics, matching.healthy_ranges)}["noise_level"]["inside"]
    assert matching.with_config(match_noise=False).noise_ceiling is None


def test_complete_healthy_ranges_adds_only_missing_statistics_and_keeps_the_bundle_verified(
        tmp_path):
    from NeuroADLib.methods.zscore import ZScoreConfig
    from NeuroADLib.models.bundles import MANIFEST, Bundle, verify_bundle
    from NeuroADLib.training.harmonisation import complete_healthy_ranges
    from NeuroADLib.training.zscore import train_zscore

    cohort = fabricated_cohort(tmp_path / "cohort", (24, 28, 24), 8)
    bundle = train_zscore(cohort, tmp_path / "zscore", ZScoreConfig(acquisition_copies=0))
    standard = IntensityStandard.load(bundle)
    full = dict(standard.healthy_ranges)
    without_noise = {k: v for k, v in full.items() if k != "noise_level"}
    full_medians = dict(standard.healthy_medians)
    assert full_medians.keys() == full.keys()
    standard.with_healthy_ranges(without_noise, {}).save(bundle)  # as a bundle built before
    added, medians = complete_healthy_ranges(bundle, cohort)
    assert list(added) == ["noise_level"]
    assert medians == pytest.approx(full_medians)
    assert full["sharpness"][0] <= medians["sharpness"] <= full["sharpness"][1]
    assert added["noise_level"] == pytest.approx(full["noise_level"])
    completed = IntensityStandard.load(bundle).healthy_ranges
    assert IntensityStandard.load(bundle).healthy_medians == pytest.approx(full_medians)
    assert completed.keys() == full.keys()
    assert all(completed[key] == pytest.approx(full[key]) for key in full)
    manifest = json.loads((bundle / MANIFEST).read_text())
    verify_bundle(Bundle(bundle, manifest))  # the manifest's hash follows the new standard
    assert manifest["intensity_standard"]["ranges_added"][-1]["scans"] == 8
    assert complete_healthy_ranges(bundle, cohort) == ({}, {})
    with pytest.raises(ModelError, match="not a bundle"):
        complete_healthy_ranges(tmp_path / "absent", cohort)
    assert IntensityStandard.load(bundle).noise_ceiling == pytest.approx(full["noise_level"][1])
    # every method, zscore too, smooths a scan noisier or sharper than the cohort
    loaded = load_method("zscore", bundle).standard
    assert loaded.sharpness_ceiling == pytest.approx(full["sharpness"][1])
    assert loaded.sharpness_target == pytest.approx(full_medians["sharpness"])


def test_sharpness_is_the_mean_gradient_over_the_median_intensity_free_of_scale():
    # a linear ramp a + b z: a Gaussian keeps it, so its gradient is b everywhere inside
    ramp = (2.0 + 0.05 * np.indices(SHAPE)[0]).astype(np.float32)
    brain = np.zeros(SHAPE, bool)
    brain[8:32, 8:40, 8:32] = True
    assert sharpness(ramp, brain) == pytest.approx(0.05 / np.median(ramp[brain]), rel=1e-4)
    image, brain, _ = anatomy()
    assert sharpness(3.0 * image, brain) == pytest.approx(sharpness(image, brain), rel=1e-5)
    assert sharpness(smooth_in_brain(image, brain, 1.0), brain) < sharpness(image, brain)


def test_match_sharpness_smooths_a_sharp_scan_to_the_ceiling_and_leaves_a_blurred_one_alone():
    image, brain, _ = anatomy()
    ceiling = 0.93 * sharpness(image, brain)  # the edge between tissues stays
    matched, sigma = match_sharpness(image, brain, ceiling)
    assert 0 < sigma < 2.0
    assert sharpness(matched, brain) == pytest.approx(ceiling, rel=0.02)
    assert sharpness(smooth_in_brain(image, brain, 0.9 * sigma), brain) > ceiling  # smallest
    assert not matched[~brain].any()
    assert matched[brain].mean() == pytest.approx(image[brain].mean(), rel=0.02)
    same, none = match_sharpness(image, brain, 2 * sharpness(image, brain))
    assert same is image and none == 0.0
    # above the ceiling, down to a lower target (the healthy median); below it, untouched
    before = sharpness(image, brain)
    typical, _ = match_sharpness(image, brain, 0.95 * before, 0.9 * before)
    assert sharpness(typical, brain) == pytest.approx(0.9 * before, rel=0.02)
    assert match_sharpness(image, brain, 1.01 * before, 0.9 * before)[1] == 0.0


def test_harmonise_matches_sharpness_before_the_profile_and_reports_it_before():
    image, brain, core = anatomy()
    standard = IntensityStandard.fit([image], [brain], 2.0, priors_from(core), CONFIG)
    biased = (image * smooth_field(4, 0.2)).astype(np.float32)
    before = sharpness(biased, brain)
    assert standard.sharpness_ceiling is None  # a standard built without the range
    plain, _ = standard.harmonise(biased, brain)
    assert sharpness(plain, brain) == pytest.approx(before, rel=0.05)
    matching = standard.with_healthy_ranges({"sharpness": [0.0, 0.93 * before]})
    matched, gain = matching.harmonise(biased, brain)
    smoothed, _ = match_sharpness(biased, brain, 0.93 * before)
    expected, _ = standard.harmonise(smoothed, brain)  # the profile of the smoothed scan
    np.testing.assert_allclose(matched, expected, rtol=1e-5, atol=1e-6)
    assert sharpness(matched, brain) == pytest.approx(0.93 * before, rel=0.05)
    statistics = matching.statistics(biased, matched, brain, gain)
    assert statistics["sharpness"] == pytest.approx(before)
    assert not {c["statistic"]: c for c in out_of_distribution(
        statistics, matching.healthy_ranges)}["sharpness"]["inside"]
    assert matching.with_config(match_sharpness=False).sharpness_ceiling is None
    assert matching.sharpness_target == matching.sharpness_ceiling  # no median: the ceiling
    to_median = matching.with_healthy_ranges(matching.healthy_ranges,
                                             {"sharpness": 0.9 * before})
    assert sharpness(to_median.harmonise(biased, brain)[0], brain) == pytest.approx(
        0.9 * before, rel=0.05)


def test_preparing_a_cohort_over_processes_gives_what_one_process_gives(tmp_path):
    from NeuroADLib.training.data import load_split
    from NeuroADLib.training.harmonisation import (
        augmented_split,
        fit_cohort_standard,
        harmonised_split,
        map_scans,
        scan_workers,
    )

    cohort = fabricated_cohort(tmp_path / "cohort", (24, 28, 24), 20)
    train, validation = load_split(cohort, "train"), load_split(cohort, "validation")
    assert scan_workers(len(train.images), 2) == 1  # 15 scans: too few for two processes
    assert scan_workers(16, 2) == 2 and scan_workers(16, 1) == 1

    def prepared(workers):
        standard, splits = fit_cohort_standard(train, [train, validation], None,
                                               workers=workers)
        augmented = harmonised_split(augmented_split(train, 2, 7, workers=workers), standard,
                                     workers=workers)
        return standard, splits + [augmented]

    one, split_one = prepared(1)
    two, split_two = prepared(2)  # 30 augmented copies: spread over two processes
    assert one.healthy_ranges == two.healthy_ranges
    for a, b in zip(split_one, split_two, strict=True):
        assert a.rows == b.rows
        assert all(np.array_equal(x, y) for x, y in zip(a.images, b.images, strict=True))
    assert len(split_two[2].images) == 2 * len(train.images)
    with pytest.raises(ValueError, match="as many of each argument"):
        map_scans(max, [1, 2], [3])

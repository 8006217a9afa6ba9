"""The voxel-wise normative model against closed forms and scikit-learn's least squares
(to float16, the precision the model is stored at)."""

from __future__ import annotations

import numpy as np
import pytest

from NeuroADLib.methods.zscore import MIN_STD, VoxelNormativeModel, ZScoreConfig
from NeuroADLib.subject import Subject

sklearn_linear = pytest.importorskip("sklearn.linear_model")


def cohort(n=30, shape=(6, 7, 5), seed=0):
    rng = np.random.default_rng(seed)
    ages = rng.uniform(20, 80, n)
    slope = rng.normal(0, 0.003, shape)
    images = [0.5 + slope * a + rng.normal(0, 0.05, shape) for a in ages]
    masks = [np.ones(shape, bool) for _ in range(n)]
    return images, masks, list(ages)


def test_age_adjusted_fit_matches_least_squares():
    images, masks, ages = cohort()
    model = VoxelNormativeModel.fit(images, masks, ages,
                                    ZScoreConfig(age_adjusted=True, smoothing_sigma_voxels=0,
                                                 standardise_intensities=False))
    x = np.stack(images).reshape(len(images), -1)
    fit = sklearn_linear.LinearRegression().fit(np.array(ages)[:, None], x)
    np.testing.assert_allclose(model.age_slope.ravel(), fit.coef_[:, 0], rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(model.expected(50.0).ravel(), fit.predict([[50.0]])[0], rtol=2e-3)
    residual = x - fit.predict(np.array(ages)[:, None])
    expected_std = np.sqrt((residual**2).sum(0) / (len(ages) - 2))
    np.testing.assert_allclose(model.std.ravel(), np.maximum(expected_std, MIN_STD), rtol=1e-3)


def test_plain_model_is_mean_and_std_and_map_is_abs_z(tmp_path):
    images, masks, _ = cohort()
    config = ZScoreConfig(age_adjusted=False, smoothing_sigma_voxels=0,
                          standardise_intensities=False)
    model = VoxelNormativeModel.fit(images, masks, None, config)
    x = np.stack(images)
    np.testing.assert_allclose(model.mean, x.mean(0), rtol=1e-3)
    np.testing.assert_allclose(model.std, np.maximum(x.std(0, ddof=1), MIN_STD), rtol=1e-3)
    test = images[0] + 0.3
    brain = np.ones(test.shape, bool)
    brain[0] = False
    z = model.anomaly_map(test, brain)
    np.testing.assert_allclose(z[1:], (np.abs(test - model.mean) / model.std)[1:], rtol=1e-5)
    assert np.all(z[0] == 0)
    loaded = VoxelNormativeModel.load(model.save(tmp_path / "m"))
    np.testing.assert_array_equal(loaded.anomaly_map(test, brain), z)


def test_saved_model_is_the_fitted_one_and_stores_only_informative_voxels(tmp_path):
    shape = (10, 12, 9)
    images, _, ages = cohort(shape=shape)
    inside = np.zeros(shape, bool)
    inside[2:8, 2:10, 2:7] = True
    rng = np.random.default_rng(1)
    masks = [inside & (rng.random(shape) < 0.97) for _ in images]
    images = [image * inside for image in images]  # skull-stripped: zero outside the brain
    model = VoxelNormativeModel.fit(images, masks, ages, ZScoreConfig())
    assert 0 < model.support.sum() < inside.sum()
    assert np.all(np.isinf(model.std[~model.support]))
    folder = model.save(tmp_path / "m")
    loaded = VoxelNormativeModel.load(folder)
    for name in ("mean", "std", "age_slope", "support", "reference_quantiles"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(model, name), err_msg=name)
    test, brain = images[3] + 0.2 * inside, inside
    np.testing.assert_array_equal(loaded.anomaly_map(test, brain, Subject(61.0)),
                                  model.anomaly_map(test, brain, Subject(61.0)))
    np.testing.assert_array_equal(loaded.expected(61.0), model.expected(61.0))
    full_grids = 3 * 2 * np.prod(shape)
    assert (folder / "zscore.safetensors").stat().st_size < full_grids


def test_age_adjusted_model_needs_ages():
    images, masks, _ = cohort(n=5)
    with pytest.raises(ValueError, match="age"):
        VoxelNormativeModel.fit(images, masks, None, ZScoreConfig(age_adjusted=True))


def test_standardisation_maps_quantiles_and_removes_contrast_changes():
    from NeuroADLib.preprocessing.intensity import brain_quantiles, standardise

    rng = np.random.default_rng(5)
    brain = np.zeros((20, 20, 20), bool)
    brain[3:17, 3:17, 3:17] = True
    image = rng.gamma(5.0, 0.1, brain.shape) * brain
    reference = np.linspace(0.1, 0.9, 13)
    mapped = standardise(image, brain, reference)
    # (percentiles interpolate between voxels, so they commute with the map only to ~1e-4)
    np.testing.assert_allclose(brain_quantiles(mapped, brain), reference, atol=1e-3)
    assert np.all(mapped[~brain] == 0)
    # Another scanner: brighter, less contrast. Standardised, it is the same image.
    other = (0.6 * image + 0.3) * brain
    np.testing.assert_allclose(standardise(other, brain, reference), mapped, atol=1e-5)


def test_model_is_blind_to_a_global_contrast_change():
    images, masks, ages = cohort()
    model = VoxelNormativeModel.fit(images, masks, ages)
    test = images[3]
    brain = np.ones(test.shape, bool)
    np.testing.assert_allclose(model.anomaly_map(0.7 * test + 0.2, brain, Subject(40.0)),
                               model.anomaly_map(test, brain, Subject(40.0)), atol=1e-3)

"""Mask helpers, skull-stripped detection, template and normalisation, against closed forms."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from NeuroADLib.grid import GridSpec
from NeuroADLib.preprocessing import masks
from NeuroADLib.preprocessing.intensity import normalise_in_brain
from NeuroADLib.templates import template_brain_mask, template_t1


def sphere(shape=(60, 60, 60), radius=20.0, centre=None) -> np.ndarray:
    centre = np.array(shape) / 2 if centre is None else np.array(centre)
    grids = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True)) <= radius**2


def test_largest_component_and_fill_holes():
    big = sphere(radius=15)
    small = sphere(radius=4, centre=(8, 8, 8))
    assert np.array_equal(masks.largest_component(big | small), big)
    hollow = big & ~sphere(radius=8)
    assert np.array_equal(masks.fill_holes(hollow), big)


def test_ball_has_the_physical_radius():
    element = masks.ball(6.0, (3.0, 1.0, 1.0))
    assert element.shape == (5, 13, 13)
    assert element[2, 6, 0] and element[0, 6, 6] and not element[0, 6, 0]


def test_dice_matches_closed_form():
    a = np.zeros((10, 10, 10), bool)
    b = np.zeros_like(a)
    a[:5], b[2:6] = True, True
    assert masks.dice(a, b) == 2 * 300 / (500 + 400)


def skull_stripped_volume(background: float) -> sitk.Image:
    brain = sphere(radius=25)
    array = np.where(brain, np.random.default_rng(0).normal(100, 30, brain.shape), background)
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing((2.0, 2.0, 2.0))
    return image


def test_skull_stripped_scan_is_detected_with_any_constant_background():
    for background in (0.0, -3.5):
        found = masks.stripped_foreground(skull_stripped_volume(background))
        assert found is not None
        assert masks.dice(found, sphere(radius=25)) > 0.999


def test_scan_with_noisy_background_is_not_skull_stripped():
    image = skull_stripped_volume(0.0)
    noisy = sitk.GetArrayFromImage(image) + np.random.default_rng(1).random((60, 60, 60))
    assert masks.stripped_foreground(sitk.GetImageFromArray(noisy)) is None


def test_normalisation_divides_by_the_brain_percentile():
    rng = np.random.default_rng(2)
    image = rng.gamma(4.0, 20.0, (20, 20, 20))
    brain = sphere((20, 20, 20), 8)
    normalised, scale = normalise_in_brain(image, brain)
    assert scale == np.percentile(image[brain], 99.5)
    assert normalised.min() == 0 and normalised.max() == 1.0
    assert np.all(normalised[~brain] == 0)
    np.testing.assert_allclose(normalised[brain & (image < scale)],
                               (image / scale)[brain & (image < scale)], rtol=1e-6)


def test_bundled_template_on_the_default_grid():
    grid = GridSpec()
    brain = sitk.GetArrayFromImage(template_brain_mask(grid)) > 0
    t1 = sitk.GetArrayFromImage(template_t1(grid))
    assert brain.shape == tuple(reversed(grid.shape))
    volume_l = brain.sum() * grid.voxel_volume_ml / 1000
    assert 1.8 < volume_l < 1.95  # 1.887 L at 1 mm
    for axis in range(3):
        assert not np.take(brain, [0, -1], axis=axis).any()
    assert t1.max() == 1.0 and t1[~brain].max() < 0.5

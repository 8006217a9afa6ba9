"""A patient's visits in one frame: each follow-up's grid image rigidly registered to the first
visit's, so that the longitudinal method fuses the same anatomy across visits.

Every visit is already on the model grid (registered to the template on its own); what is left
between two visits of one head is a small rigid difference, which a rigid registration inside
the first visit's brain removes. Maps move between frames by resampling; the images the
methods see are never resampled twice.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .registration import _SEED_OFFSET
from .threads import single_threaded


def rigid_to_first(first: sitk.Image, first_brain: np.ndarray, follow_up: sitk.Image,
                   seed: int = 0) -> sitk.Euler3DTransform:
    """The rigid transform taking points of the first visit's grid to the follow-up's (the
    SimpleITK convention: fixed to moving), by Mattes mutual information inside the first
    visit's brain, two resolution levels, from the identity (both are on the template grid)."""
    registration = sitk.ImageRegistrationMethod()
    registration.SetMetricAsMattesMutualInformation(32)
    registration.SetMetricSamplingStrategy(registration.RANDOM)
    registration.SetMetricSamplingPercentage(0.25, seed + _SEED_OFFSET)
    mask = sitk.GetImageFromArray(first_brain.astype(np.uint8))
    mask.CopyInformation(first)
    registration.SetMetricFixedMask(mask)
    registration.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-4, 200,
                                                          relaxationFactor=0.5)
    registration.SetOptimizerScalesFromPhysicalShift()
    registration.SetShrinkFactorsPerLevel([2, 1])
    registration.SetSmoothingSigmasPerLevel([1.0, 0.0])
    registration.SetInterpolator(sitk.sitkLinear)
    centre = first.TransformContinuousIndexToPhysicalPoint(
        [(n - 1) / 2.0 for n in first.GetSize()])
    initial = sitk.Euler3DTransform()
    initial.SetCenter(centre)
    registration.SetInitialTransform(initial, inPlace=False)
    with single_threaded():
        found = registration.Execute(sitk.Cast(first, sitk.sitkFloat32),
                                     sitk.Cast(follow_up, sitk.sitkFloat32))
    transform = sitk.Euler3DTransform()
    transform.SetCenter(centre)
    transform.SetParameters(sitk.CompositeTransform(found).GetNthTransform(0).GetParameters())
    return transform


def into_first(array: np.ndarray, grid: sitk.Image, transform: sitk.Transform) -> np.ndarray:
    """A follow-up's grid array (float) resampled into the first visit's frame."""
    return _resample(array, grid, transform)


def from_first(array: np.ndarray, grid: sitk.Image, transform: sitk.Transform) -> np.ndarray:
    """An array in the first visit's frame resampled back onto the follow-up's grid."""
    return _resample(array, grid, transform.GetInverse())


def _resample(array: np.ndarray, grid: sitk.Image, transform: sitk.Transform) -> np.ndarray:
    image = sitk.GetImageFromArray(np.asarray(array, np.float32))
    image.CopyInformation(grid)
    moved = sitk.Resample(image, grid, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(moved)

"""N4 bias-field correction (Tustison et al. 2010) through SimpleITK."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .threads import single_threaded


def n4_bias_correct(
    image: sitk.Image,
    mask: sitk.Image,
    fitting_spacing_mm: float = 4.0,
    iterations: tuple[int, ...] = (40, 30, 20),
) -> sitk.Image:
    """Estimate the bias field on a coarse copy (about 4 mm voxels, for speed) and divide it out
    of the full-resolution image. N4 works on logs: an image with negative values in the mask
    (e.g. one already z-scored) is first shifted so that its lowest value there is zero, then
    everything below zero is clipped."""
    image = sitk.Cast(image, sitk.sitkFloat32)
    inside = sitk.GetArrayViewFromImage(image)[sitk.GetArrayViewFromImage(mask) > 0]
    if inside.size and float(inside.min()) < 0:
        image = image - float(inside.min())
    image = sitk.Clamp(image, lowerBound=0.0)
    shrink = [max(1, int(round(fitting_spacing_mm / s))) for s in image.GetSpacing()]
    small_image = sitk.Shrink(image, shrink)
    small_mask = sitk.Shrink(sitk.Cast(mask, sitk.sitkUInt8), shrink)
    if not np.any(sitk.GetArrayViewFromImage(small_mask)):
        return image
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations(list(iterations))
    with single_threaded():  # its fit sums differ with the thread count
        corrector.Execute(small_image, small_mask)
        log_bias = corrector.GetLogBiasFieldAsImage(image)
    return sitk.Cast(image / sitk.Exp(log_bias), sitk.sitkFloat32)

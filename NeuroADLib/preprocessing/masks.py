"""Binary-mask helpers on (z, y, x) arrays: head masks, skull-stripped detection, clean-up."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from skimage.filters import threshold_otsu

# An already skull-stripped scan has a constant background and a foreground the size of a
# brain; a scan with skull (and often neck) has a foreground of several litres.
SKULL_STRIPPED_MAX_FOREGROUND_L = 2.5
SKULL_STRIPPED_MIN_BACKGROUND_FRACTION = 0.3


def largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask.astype(bool)
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
    return labels == (1 + int(np.argmax(sizes)))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed cavities in 3D and then slice by slice along each axis (which also closes
    cavities open at a cut field of view)."""
    filled = ndimage.binary_fill_holes(mask)
    for axis in range(3):
        filled = np.stack(
            [ndimage.binary_fill_holes(s) for s in np.moveaxis(filled, axis, 0)], axis=0
        )
        filled = np.moveaxis(filled, 0, axis)
    return filled


def ball(radius_mm: float, spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    """An ellipsoidal structuring element of a physical radius on an anisotropic grid."""
    half = [max(0, int(np.floor(radius_mm / s))) for s in spacing_zyx]
    grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    distance = sum((g * s / radius_mm) ** 2 for g, s in zip(grids, spacing_zyx, strict=True))
    return distance <= 1.0


def head_mask(image: sitk.Image) -> np.ndarray:
    """Foreground (head) mask by Otsu on a lightly smoothed image, largest component, filled."""
    smoothed = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(image, 2.0))
    top = np.percentile(smoothed, 99.9)
    threshold = threshold_otsu(np.clip(smoothed, None, top))
    mask = largest_component(smoothed > threshold)
    spacing_zyx = tuple(reversed(image.GetSpacing()))
    mask = ndimage.binary_closing(mask, structure=ball(4.0, spacing_zyx), iterations=1)
    return fill_holes(mask)


def background_value(array: np.ndarray) -> float:
    """The most frequent value on the volume's outer faces."""
    faces = np.concatenate([
        array[[0, -1]].ravel(), array[:, [0, -1]].ravel(), array[:, :, [0, -1]].ravel()
    ])
    values, counts = np.unique(faces, return_counts=True)
    return float(values[np.argmax(counts)])


def stripped_foreground(image: sitk.Image) -> np.ndarray | None:
    """The brain of an already skull-stripped scan (voxels off its constant background),
    or None when the scan is not skull-stripped."""
    array = sitk.GetArrayViewFromImage(image)
    background = background_value(array)
    off_background = array != background
    voxel_l = float(np.prod(image.GetSpacing())) / 1e6
    if (1.0 - off_background.mean()) < SKULL_STRIPPED_MIN_BACKGROUND_FRACTION:
        return None
    if off_background.sum() * voxel_l > SKULL_STRIPPED_MAX_FOREGROUND_L:
        return None
    return fill_holes(largest_component(off_background))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(a, b).sum() / total)


def mask_image(mask: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.CopyInformation(reference)
    return image


def refine_with_intensity(
    image: np.ndarray,
    brain: np.ndarray,
    spacing_zyx: tuple[float, float, float],
    tissue_fraction: float = 0.45,
    opening_mm: float = 4.0,
    closing_mm: float = 6.0,
) -> np.ndarray:
    """Trim a registration-based brain mask to the brain actually seen in a T1-like image.

    Tissue = voxels brighter than `tissue_fraction` x the brain's median (grey and white
    matter; CSF, bone and air are darker), within the mask plus a 3 mm margin. An erosion by
    `opening_mm` cuts thin bridges to scalp, eyes and muscle; the largest piece is grown back
    inside the tissue (geodesic reconstruction), then closed and filled to take back sulcal and
    ventricular CSF. Never grows the mask by more than the margin.
    """
    margin = ndimage.binary_dilation(brain, ball(3.0, spacing_zyx))
    threshold = tissue_fraction * float(np.median(image[brain]))
    tissue = margin & (image > threshold)
    core = largest_component(ndimage.binary_erosion(tissue, ball(opening_mm, spacing_zyx)))
    if not core.any():
        return brain
    grown = ndimage.binary_dilation(core, ball(opening_mm, spacing_zyx)) & tissue
    closed = ndimage.binary_closing(grown, ball(closing_mm, spacing_zyx))
    return fill_holes(largest_component(closed)) & margin

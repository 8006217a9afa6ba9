"""Moving volumes between the native scan and the model grid, both ways, with one affine.

`grid_to_native` is the exact inverse of `native_to_grid`: the same affine, inverted in closed
form, resampling onto the input's own geometry (size, origin, spacing, direction).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..grid import GridSpec

_INTERPOLATORS = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}


def native_to_grid(
    image: sitk.Image,
    template_to_native: sitk.AffineTransform,
    grid: GridSpec,
    interpolation: str = "linear",
) -> sitk.Image:
    """Resample a native-space volume onto the model grid (float32; 0 outside the scan)."""
    return sitk.Resample(
        sitk.Cast(image, sitk.sitkFloat32), grid.reference_image(), template_to_native,
        _INTERPOLATORS[interpolation], 0.0, sitk.sitkFloat32,
    )


def grid_to_native(
    grid_image: sitk.Image,
    template_to_native: sitk.AffineTransform,
    reference: sitk.Image,
    kind: str = "map",
) -> sitk.Image:
    """Map a grid volume back onto the native scan: linear interpolation for maps, nearest
    neighbour for masks (uint8). The result has exactly the reference's geometry."""
    if kind not in ("map", "mask"):
        raise ValueError("kind must be 'map' or 'mask'")
    interpolation = sitk.sitkLinear if kind == "map" else sitk.sitkNearestNeighbor
    pixel_type = sitk.sitkFloat32 if kind == "map" else sitk.sitkUInt8
    source = sitk.Cast(grid_image, sitk.sitkFloat32 if kind == "map" else sitk.sitkUInt8)
    return sitk.Resample(
        source, reference, template_to_native.GetInverse(), interpolation, 0, pixel_type
    )


def save_transform(transform: sitk.AffineTransform, path: str | os.PathLike) -> Path:
    """Write the affine as an ITK text transform (.tfm), readable by 3D Slicer and ANTs."""
    sitk.WriteTransform(transform, str(path))
    return Path(path)


def load_transform(path: str | os.PathLike) -> sitk.AffineTransform:
    """Read a template -> native affine written by `save_transform`."""
    try:
        transform = sitk.ReadTransform(str(path))
    except RuntimeError:
        raise InputError(f"Cannot read the transform {path}.") from None
    if transform.GetName() == "CompositeTransform":
        composite = sitk.CompositeTransform(transform)
        if composite.GetNumberOfTransforms() != 1:
            raise InputError(f"{path} is not a single affine transform.")
        transform = composite.GetNthTransform(0)
    affine = sitk.AffineTransform(3)
    affine.SetParameters(transform.GetParameters())
    affine.SetFixedParameters(transform.GetFixedParameters())
    return affine


def affine_matrix(transform: sitk.AffineTransform) -> np.ndarray:
    """The 4 x 4 homogeneous matrix (LPS mm) of a template -> native affine."""
    matrix = np.eye(4)
    a = np.array(transform.GetMatrix()).reshape(3, 3)
    centre = np.array(transform.GetCenter())
    matrix[:3, :3] = a
    matrix[:3, 3] = np.array(transform.GetTranslation()) + centre - a @ centre
    return matrix

"""Reading and writing volumes in their native (scanner) geometry.

A volume is a SimpleITK image: its origin, spacing and direction are the geometry every result
must come back onto. Supported inputs: NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage
(.mha, .mhd) and a folder holding one DICOM series.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError, OutputError

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def _has_volume_suffix(path: Path) -> bool:
    return any(path.name.lower().endswith(suffix) for suffix in VOLUME_SUFFIXES)


def read_volume(path: str | os.PathLike) -> sitk.Image:
    """Read a 3D scalar volume and check that it is a usable image.

    Raises InputError naming the problem for a missing or unreadable file, a 2D, 4D or
    multi-component image, and an empty, constant or non-finite volume.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"Input not found: {path}. Check the path.")
    if path.is_dir():
        image = _read_dicom_series(path)
    else:
        if not _has_volume_suffix(path):
            raise InputError(
                f"Unsupported file type: {path.name}. Use NIfTI (.nii/.nii.gz), NRRD "
                "(.nrrd/.nhdr), MetaImage (.mha/.mhd) or a folder holding a DICOM series."
            )
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as error:
            kind = next(s for s in VOLUME_SUFFIXES if path.name.lower().endswith(s))
            raise InputError(
                f"Cannot read {path}: the file is damaged or not a {kind} image "
                f"({_first_line(error)})."
            ) from None
        if path.name.lower().endswith((".nii", ".nii.gz")):
            _check_nifti_finite(path)
    check_volume(image, str(path))
    return image


def _check_nifti_finite(path: Path) -> None:
    """ITK's NIfTI reader silently turns NaN and infinity into 0; read the raw data to catch it."""
    import nibabel as nib

    data = np.asanyarray(nib.load(str(path)).dataobj)
    if np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
        raise InputError(f"{path} contains NaN or infinite values; fix or re-export the volume.")


def _read_dicom_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    series_ids = reader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise InputError(
            f"{folder} is a folder without a DICOM series. Give a volume file or a DICOM folder."
        )
    if len(series_ids) > 1:
        raise InputError(
            f"{folder} holds {len(series_ids)} DICOM series; put the one to analyse in its own "
            "folder."
        )
    files = reader.GetGDCMSeriesFileNames(str(folder), series_ids[0])
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as error:
        raise InputError(
            f"Cannot read the DICOM series in {folder} ({_first_line(error)})."
        ) from None


def check_volume(image: sitk.Image, name: str = "input") -> None:
    """Reject images that are not a single 3D scalar volume with finite, varying intensities."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{name} has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
            "give a single-channel (scalar) MRI volume."
        )
    size = image.GetSize()
    if image.GetDimension() != 3 or min(size) < 2:
        dims = "x".join(str(s) for s in size)
        raise InputError(
            f"{name} is a {image.GetDimension()}D image of size {dims}; NeuroAD needs one 3D "
            "volume (for a 4D series, extract the volume to analyse first)."
        )
    array = sitk.GetArrayViewFromImage(image)
    if not np.all(np.isfinite(array)):
        raise InputError(f"{name} contains NaN or infinite values; fix or re-export the volume.")
    if array.size == 0 or float(array.max()) == float(array.min()):
        raise InputError(f"{name} is empty or constant (every voxel has one value): no image.")


def write_volume(image: sitk.Image, path: str | os.PathLike) -> Path:
    """Write an image, creating nothing but the file itself; compressed for .nii.gz."""
    path = Path(path)
    if not path.parent.is_dir():
        raise OutputError(f"Output folder does not exist: {path.parent}")
    try:
        sitk.WriteImage(image, str(path), useCompression=True)
    except RuntimeError as error:
        raise OutputError(f"Cannot write {path} ({_first_line(error)}).") from None
    return path


def array_like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """An image holding a (z, y, x) array with exactly the reference image's geometry."""
    if tuple(reversed(array.shape)) != reference.GetSize():
        raise ValueError(
            f"array shape {array.shape} does not match the reference size {reference.GetSize()}"
        )
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def same_geometry(a: sitk.Image, b: sitk.Image, tolerance: float = 1e-4) -> bool:
    """True when two images share size, origin, spacing and direction (within tolerance mm)."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tolerance)
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tolerance)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tolerance)
    )


def geometry_of(image: sitk.Image) -> dict:
    """The geometry of an image as plain JSON-friendly lists (LPS physical coordinates)."""
    return {
        "size": list(image.GetSize()),
        "spacing": [float(s) for s in image.GetSpacing()],
        "origin": [float(o) for o in image.GetOrigin()],
        "direction": [float(d) for d in image.GetDirection()],
    }


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__

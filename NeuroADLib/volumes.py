"""Reading and writing volumes in their native (scanner) geometry.

A volume is a SimpleITK image: its origin, spacing and direction are the geometry every result
must come back onto. Supported inputs: NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage
(.mha, .mhd) and a folder holding one DICOM series. `read_header` reads the geometry alone (no
voxel data), so that guards can refuse a volume before anything large is allocated.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import CorruptFileError, DicomSeriesError, InputError, OutputError

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


# DICOM slices further apart than this many times the series' usual slice distance mean that
# slices are missing; closer than this fraction of it, that two images share a position.
DICOM_GAP_FACTOR = 1.5
DICOM_DUPLICATE_FRACTION = 0.05


@dataclass(frozen=True)
class VolumeHeader:
    """What a volume's header says, read without its voxel data."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    components: int
    pixel_type: str

    @property
    def voxels(self) -> int:
        return int(np.prod(self.size, dtype=np.int64))

    def describe(self) -> str:
        """Size, voxel size and origin in words, e.g. for a message comparing two volumes."""
        return (f"{joined(self.size)} voxels of {joined(self.spacing)} mm at origin "
                f"({', '.join(f'{o:.1f}' for o in self.origin)})")


def joined(values) -> str:
    """Sizes or spacings as in a message: `256 x 224 x 26`, `0.9 x 0.9 x 5.5`."""
    return " x ".join(f"{float(v):g}" for v in values)


def read_header(path: str | os.PathLike) -> VolumeHeader:
    """The geometry of a volume file or DICOM folder, without reading its voxels. Raises
    InputError for a missing, unsupported or unreadable file and DicomSeriesError for a
    folder that does not hold one complete, consistent series."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"Input not found: {path}. Check the path.")
    if path.is_dir():
        return _dicom_series(path)[1]
    kind = _volume_kind(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise InputError(
            f"Cannot read {path}: the file is damaged or not a {kind} image "
            f"({_first_line(error)})."
        ) from None
    return VolumeHeader(tuple(reader.GetSize()), tuple(reader.GetSpacing()),
                        tuple(reader.GetOrigin()), tuple(reader.GetDirection()),
                        reader.GetNumberOfComponents(),
                        sitk.GetPixelIDValueAsString(reader.GetPixelID()))


def _volume_kind(path: Path) -> str:
    for suffix in VOLUME_SUFFIXES:
        if path.name.lower().endswith(suffix):
            return suffix
    raise InputError(
        f"Unsupported file type: {path.name}. Use NIfTI (.nii/.nii.gz), NRRD "
        "(.nrrd/.nhdr), MetaImage (.mha/.mhd) or a folder holding a DICOM series."
    )


def read_volume(path: str | os.PathLike) -> sitk.Image:
    """Read a 3D scalar volume and check that it is a usable image.

    The header is read and checked first (2D, 4D, multi-component images are refused before
    their voxels are read). Raises InputError naming the problem for a missing or unreadable
    file, CorruptFileError for a truncated or damaged one, DicomSeriesError for a folder that is
    not one complete series, and InputError for an empty, constant or non-finite volume.
    """
    image = read_image(path)
    check_volume(image, str(path))
    return image


def read_image(path: str | os.PathLike) -> sitk.Image:
    """`read_volume` without the check of its intensities (for masks, where a constant volume
    has its own message): a 3D scalar volume, read whole or refused."""
    path = Path(path)
    if path.is_dir():
        files, header = _dicom_series(path)
        check_header(header, str(path))
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        try:
            return reader.Execute()
        except RuntimeError as error:
            raise DicomSeriesError(
                f"Cannot read the DICOM series in {path} ({_first_line(error)})."
            ) from None
    header = read_header(path)
    check_header(header, str(path))
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise CorruptFileError(_corrupt(path, header, _first_line(error))) from None
    if path.name.lower().endswith((".nii", ".nii.gz")):
        _check_nifti_data(path, header)
    return image


def _corrupt(path: Path, header: VolumeHeader, reason: str) -> str:
    return (f"{path} is truncated or damaged: its header describes {joined(header.size)} "
            f"{header.pixel_type} voxels, but they cannot be read ({reason}). Copy or export "
            "the file again.")


def _check_nifti_data(path: Path, header: VolumeHeader) -> None:
    """Read the raw NIfTI data again: ITK's reader fills a truncated file with zeros and turns
    NaN and infinity into 0, silently."""
    import gzip
    import zlib

    import nibabel as nib

    try:
        if path.name.lower().endswith(".gz"):  # read to the end, so that the CRC is checked
            with gzip.open(path, "rb") as handle:  # ITK reads NIfTI-1 only
                image = nib.Nifti1Image.from_bytes(handle.read())
        else:
            image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
    except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) \
            as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise CorruptFileError(_corrupt(path, header, reason)) from None
    if np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
        raise InputError(f"{path} contains NaN or infinite values; fix or re-export the volume.")


def _dicom_series(folder: Path) -> tuple[list[str], VolumeHeader]:
    """The files of the one DICOM series in a folder, in slice order, and its header; checked
    for one series, one slice size and orientation, and evenly spaced slices."""
    reader = sitk.ImageSeriesReader()
    series_ids = reader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise InputError(
            f"{folder} is a folder without a DICOM series. Give a volume file or a DICOM folder."
        )
    if len(series_ids) > 1:
        counts = [len(reader.GetGDCMSeriesFileNames(str(folder), s)) for s in series_ids]
        raise DicomSeriesError(
            f"{folder} mixes {len(series_ids)} DICOM series ({', '.join(map(str, counts))} "
            "files); put the one to analyse in its own folder."
        )
    files = list(reader.GetGDCMSeriesFileNames(str(folder), series_ids[0]))
    headers = []
    for name in files:
        slice_reader = sitk.ImageFileReader()
        slice_reader.SetFileName(name)
        try:
            slice_reader.ReadImageInformation()
        except RuntimeError as error:
            raise DicomSeriesError(
                f"Cannot read the DICOM file {name} ({_first_line(error)}).") from None
        headers.append(slice_reader)
    first = headers[0]
    shapes = {tuple(h.GetSize()[:2]) for h in headers}
    if len(shapes) > 1:
        raise DicomSeriesError(
            f"The DICOM series in {folder} mixes slices of "
            f"{' and '.join(joined(s) for s in sorted(shapes))} pixels: it is not one volume.")
    if any(not np.allclose(h.GetDirection(), first.GetDirection(), atol=1e-3) for h in headers):
        raise DicomSeriesError(
            f"The DICOM series in {folder} mixes slice orientations: it is not one volume.")
    normal = np.array(first.GetDirection()).reshape(3, 3)[:, 2]
    positions = np.array([float(np.dot(h.GetOrigin(), normal)) for h in headers])
    steps = np.diff(positions)
    spacing = float(np.median(np.abs(steps))) if len(steps) else float(first.GetSpacing()[2])
    if len(steps) and np.any(np.abs(steps) < DICOM_DUPLICATE_FRACTION * max(spacing, 1e-6)):
        raise DicomSeriesError(
            f"The DICOM series in {folder} has several images at one slice position "
            "(echoes, time points or a repeated acquisition in one series): export the one "
            "volume to analyse into its own folder.")
    gaps = np.flatnonzero(np.abs(steps) > DICOM_GAP_FACTOR * spacing)
    if len(gaps):
        k = int(gaps[0])
        raise DicomSeriesError(
            f"The DICOM series in {folder} is missing slices: {abs(steps[k]):.2f} mm between "
            f"slices {k + 1} and {k + 2} of {len(files)}, where its slices are {spacing:.2f} mm "
            f"apart ({len(gaps)} gap(s)). Export the complete series again.")
    header = VolumeHeader(
        (*first.GetSize()[:2], len(files)), (*first.GetSpacing()[:2], spacing),
        tuple(first.GetOrigin()), tuple(first.GetDirection()), first.GetNumberOfComponents(),
        sitk.GetPixelIDValueAsString(first.GetPixelID()))
    return files, header


def check_header(header: VolumeHeader, name: str = "input") -> None:
    """Reject, from the header alone, what is not a single 3D scalar volume."""
    if header.components != 1:
        raise InputError(
            f"{name} has {header.components} components per voxel; "
            "give a single-channel (scalar) MRI volume."
        )
    _check_shape(len(header.size), header.size, name)


def _check_shape(dimension: int, size: tuple[int, ...], name: str) -> None:
    if dimension != 3 or min(size) < 2:
        dims = "x".join(str(s) for s in size)
        raise InputError(
            f"{name} is a {dimension}D image of size {dims}; NeuroAD needs one 3D "
            "volume (for a 4D series, extract the volume to analyse first)."
        )


def check_volume(image: sitk.Image, name: str = "input") -> None:
    """Reject images that are not a single 3D scalar volume with finite, varying intensities."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{name} has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
            "give a single-channel (scalar) MRI volume."
        )
    _check_shape(image.GetDimension(), image.GetSize(), name)
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

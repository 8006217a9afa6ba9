"""Reading volumes in every supported format keeps geometry; bad inputs fail clearly."""

from __future__ import annotations

import time

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import oblique_image

from NeuroADLib.errors import EXIT_BAD_INPUT, InputError
from NeuroADLib.volumes import array_like, read_volume, same_geometry, write_volume


def write_dicom_series(image: sitk.Image, folder) -> None:
    """Write an int16 volume as a DICOM series (one file per slice) with full geometry tags."""
    image = sitk.Cast(image, sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125." + time.strftime("%Y%m%d%H%M%S")
    direction = image.GetDirection()
    orientation = "\\".join(str(v) for v in (direction[0], direction[3], direction[6],
                                               direction[1], direction[4], direction[7]))
    for k in range(image.GetDepth()):
        slice_k = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": "MR", "0010|0010": "Test^Phantom", "0020|000d": uid + ".1",
            "0020|000e": uid + ".2", "0020|0037": orientation,
            "0020|0032": "\\".join(str(v) for v in position), "0020|0013": str(k + 1),
            "0018|0050": str(image.GetSpacing()[2]), "0008|0018": f"{uid}.3.{k + 1}",
            "0028|0030": f"{image.GetSpacing()[1]}\\{image.GetSpacing()[0]}",
        }
        for key, value in tags.items():
            slice_k.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(slice_k)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"])
def test_every_file_format_keeps_geometry_and_values(tmp_path, suffix):
    image = oblique_image()
    path = tmp_path / f"scan{suffix}"
    sitk.WriteImage(image, str(path))
    loaded = read_volume(path)
    assert same_geometry(loaded, image, tolerance=1e-5)
    np.testing.assert_allclose(sitk.GetArrayFromImage(loaded), sitk.GetArrayFromImage(image))


def test_dicom_series_folder_keeps_geometry(tmp_path):
    image = sitk.Round(oblique_image())
    write_dicom_series(image, tmp_path)
    loaded = read_volume(tmp_path)
    assert same_geometry(loaded, image, tolerance=1e-4)
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(loaded), sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkInt16))
    )


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_volume(tmp_path / "nope.nii.gz")


def test_unreadable_file(tmp_path):
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(b"this is not an image" * 10)
    with pytest.raises(InputError, match="Cannot read"):
        read_volume(path)
    assert InputError.exit_code == EXIT_BAD_INPUT


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "scan.png"
    path.write_bytes(b"x")
    with pytest.raises(InputError, match="Unsupported"):
        read_volume(path)


def test_folder_without_dicom(tmp_path):
    with pytest.raises(InputError, match="without a DICOM"):
        read_volume(tmp_path)


def test_2d_image_rejected(tmp_path):
    path = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(20, 30).astype(np.float32)), str(path))
    with pytest.raises(InputError, match="2D"):
        read_volume(path)


def test_4d_image_rejected(tmp_path):
    path = tmp_path / "series.nii.gz"
    nib.save(nib.Nifti1Image(np.random.rand(10, 10, 10, 3).astype(np.float32), np.eye(4)), path)
    with pytest.raises(InputError, match="4D|components"):
        read_volume(path)


def test_single_slice_volume_rejected(tmp_path):
    path = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.random.rand(10, 10, 1).astype(np.float32), np.eye(4)), path)
    with pytest.raises(InputError, match="3D volume"):
        read_volume(path)


@pytest.mark.parametrize("value", [0.0, 7.0])
def test_constant_volume_rejected(tmp_path, value):
    path = tmp_path / "constant.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.full((8, 9, 10), value, np.float32)), str(path))
    with pytest.raises(InputError, match="constant"):
        read_volume(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("suffix", [".nii.gz", ".mha"])
def test_non_finite_volume_rejected(tmp_path, bad, suffix):
    """NIfTI goes through nibabel because ITK's reader silently zeroes NaN and infinity."""
    array = np.random.rand(8, 9, 10).astype(np.float32)
    array[3, 4, 5] = bad
    path = tmp_path / f"nan{suffix}"
    if suffix == ".nii.gz":
        nib.save(nib.Nifti1Image(array, np.eye(4)), path)
    else:
        sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    with pytest.raises(InputError, match="NaN or infinite"):
        read_volume(path)


def test_array_like_copies_geometry_and_checks_shape(tmp_path):
    reference = oblique_image()
    array = np.zeros(tuple(reversed(reference.GetSize())), np.float32)
    result = array_like(array, reference)
    assert same_geometry(result, reference, tolerance=0.0)
    written = write_volume(result, tmp_path / "out.nii.gz")
    assert same_geometry(sitk.ReadImage(str(written)), reference, tolerance=1e-5)
    with pytest.raises(ValueError, match="does not match"):
        array_like(array[:-1], reference)

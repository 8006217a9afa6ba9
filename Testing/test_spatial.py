"""The grid <-> native mapping is exact: checked on linear intensity ramps, which trilinear
interpolation reproduces exactly, so any error is a geometry error."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from conftest import oblique_image

from NeuroADLib.grid import GridSpec
from NeuroADLib.preprocessing.spatial import (
    affine_matrix,
    grid_to_native,
    load_transform,
    native_to_grid,
    save_transform,
)
from NeuroADLib.volumes import same_geometry

GRID = GridSpec(spacing=(4.0, 4.0, 4.0), shape=(20, 24, 20), origin_ras=(-38.0, -50.0, -36.0))
RAMP = np.array([0.3, -0.2, 0.7])


def template_to_native() -> sitk.AffineTransform:
    """A template -> native affine with rotation, anisotropic scale and shear."""
    affine = sitk.AffineTransform(3)
    rotation = np.array(sitk.VersorTransform((0.1, 0.3, -0.2), 0.5).GetMatrix()).reshape(3, 3)
    affine.SetMatrix((rotation @ np.diag([0.9, 1.1, 0.95]) + 0.02).ravel().tolist())
    affine.SetTranslation((5.0, -8.0, 3.0))
    affine.SetCenter((1.0, 2.0, 3.0))
    return affine


def physical_grid(image: sitk.Image) -> np.ndarray:
    """(z, y, x, 3) array of the physical coordinates of every voxel centre."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in image.GetSize()], indexing="ij"), -1)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    points = np.asarray(image.GetOrigin()) + (index * image.GetSpacing()) @ direction.T
    return points.transpose(2, 1, 0, 3)


def native_scan() -> sitk.Image:
    return oblique_image(size=(60, 64, 30), spacing=(1.5, 1.4, 3.0))


def test_grid_to_native_is_exact_on_a_ramp():
    transform = template_to_native()
    grid_ref = GRID.reference_image()
    grid_image = sitk.GetImageFromArray((physical_grid(grid_ref) @ RAMP + 4.0).astype(np.float64))
    grid_image.CopyInformation(grid_ref)
    native = native_scan()
    mapped = grid_to_native(grid_image, transform, native)
    assert same_geometry(mapped, native, tolerance=0.0)

    inverse = transform.GetInverse()
    points = physical_grid(native).reshape(-1, 3)
    template_points = np.array([inverse.TransformPoint(p.tolist()) for p in points])
    expected = template_points @ RAMP + 4.0
    # Only voxels whose pre-image is inside the grid (one voxel clear of its border) count.
    index = [grid_ref.TransformPhysicalPointToContinuousIndex(p.tolist()) for p in template_points]
    inside = np.all((np.array(index) > 1) & (np.array(index) < np.array(GRID.shape) - 2), axis=1)
    assert inside.sum() > 1000
    values = sitk.GetArrayFromImage(mapped).reshape(-1)
    np.testing.assert_allclose(values[inside], expected[inside], atol=1e-4)


def test_native_to_grid_is_exact_on_a_ramp():
    transform = template_to_native()
    native = native_scan()
    ramp = sitk.GetImageFromArray((physical_grid(native) @ RAMP - 2.0).astype(np.float32))
    ramp.CopyInformation(native)
    on_grid = native_to_grid(ramp, transform, GRID)
    points = physical_grid(GRID.reference_image()).reshape(-1, 3)
    native_points = np.array([transform.TransformPoint(p.tolist()) for p in points])
    expected = native_points @ RAMP - 2.0
    index = np.array([native.TransformPhysicalPointToContinuousIndex(p.tolist())
                      for p in native_points])
    inside = np.all((index > 1) & (index < np.array(native.GetSize()) - 2), axis=1)
    assert inside.sum() > 500
    values = sitk.GetArrayFromImage(on_grid).reshape(-1)
    np.testing.assert_allclose(values[inside], expected[inside], atol=2e-3)


def test_mask_goes_back_as_nearest_neighbour_uint8():
    grid_ref = GRID.reference_image()
    mask = sitk.GetImageFromArray((np.random.default_rng(0).random((20, 24, 20)) > 0.5)
                                  .astype(np.uint8))
    mask.CopyInformation(grid_ref)
    native = native_scan()
    mapped = grid_to_native(mask, template_to_native(), native, kind="mask")
    assert mapped.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayFromImage(mapped))) <= {0, 1}
    assert same_geometry(mapped, native, tolerance=0.0)


def test_transform_file_round_trip_and_matrix(tmp_path):
    transform = template_to_native()
    loaded = load_transform(save_transform(transform, tmp_path / "t.tfm"))
    np.testing.assert_allclose(loaded.GetParameters(), transform.GetParameters(), atol=1e-9)
    matrix = affine_matrix(loaded)
    for point in [(0.0, 0.0, 0.0), (10.0, -20.0, 30.0)]:
        np.testing.assert_allclose(matrix[:3, :3] @ point + matrix[:3, 3],
                                   transform.TransformPoint(point), atol=1e-6)


def test_grid_header_carries_mni_coordinates(tmp_path):
    grid = GridSpec()
    path = tmp_path / "grid.nii.gz"
    sitk.WriteImage(grid.reference_image(), str(path))
    header_affine = nib.load(path).affine
    np.testing.assert_allclose(header_affine, grid.ras_affine(), atol=1e-5)
    # Voxel centre of the grid maps to the template brain's centre (0, -17, 5) MNI mm.
    centre = header_affine @ np.array([*(np.array(grid.shape) - 1) / 2.0, 1.0])
    np.testing.assert_allclose(centre[:3], (0.0, -17.0, 5.0))
    assert GridSpec.from_dict(grid.to_dict()) == grid

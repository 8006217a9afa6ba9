"""Preprocessing on real scans: IXI with skull and neck, a skull-stripped MS case, a raw
thick-slice clinical scan. Each is preprocessed once per test session."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import CLINICAL_T1, IXI_SCAN, MS_T1, require

from NeuroADLib.grid import GridSpec
from NeuroADLib.preprocessing import (
    grid_to_native,
    load_preprocessed,
    preprocess,
    save_preprocessed,
)
from NeuroADLib.preprocessing.masks import dice
from NeuroADLib.volumes import read_volume, same_geometry

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ixi():
    return preprocess(require(IXI_SCAN))


def test_ixi_grid_outputs(ixi):
    grid = GridSpec()
    image = sitk.GetArrayFromImage(ixi.image)
    mask = sitk.GetArrayFromImage(ixi.brain_mask) > 0
    assert ixi.image.GetSize() == grid.shape
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert np.all(image[~mask] == 0)
    quality = ixi.report["quality"]
    assert 1000 < quality["brain_volume_ml"] < 2000
    assert quality["dice_with_template_brain"] > 0.9
    assert ixi.report["brain_mask_source"] == "template deformable"
    assert set(ixi.report["timings_s"]) >= {"n4", "registration", "brain_extraction"}


def test_ixi_round_trip_correlates_with_the_input(ixi):
    native = read_volume(IXI_SCAN)
    back = grid_to_native(ixi.image, ixi.template_to_native, native)
    assert same_geometry(back, native, tolerance=0.0)
    brain = sitk.GetArrayFromImage(ixi.native_brain_mask) > 0
    inside = brain & (sitk.GetArrayFromImage(back) > 0)
    correlation = np.corrcoef(sitk.GetArrayFromImage(native)[inside],
                              sitk.GetArrayFromImage(back)[inside])[0, 1]
    assert correlation > 0.9


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha"])
def test_results_come_back_with_the_input_geometry_in_every_format(ixi, tmp_path, suffix):
    source = tmp_path / f"input{suffix}"
    sitk.WriteImage(read_volume(IXI_SCAN), str(source))
    reference = read_volume(source)
    for kind, grid_image in (("map", ixi.image), ("mask", ixi.brain_mask)):
        out = tmp_path / f"{kind}.nii.gz"
        native = grid_to_native(grid_image, ixi.template_to_native, reference, kind)
        sitk.WriteImage(native, str(out))
        assert same_geometry(sitk.ReadImage(str(out)), reference, tolerance=1e-4)


def test_saved_folder_reads_back(ixi, tmp_path):
    folder = save_preprocessed(ixi, tmp_path / "case", title="IXI012")
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["brain_mask.nii.gz", "image.nii.gz", "native_brain_mask.nii.gz",
                     "preprocess.json", "qc.png", "template_to_native.tfm"]
    case = load_preprocessed(folder)
    np.testing.assert_allclose(case.template_to_native.GetParameters(),
                               ixi.template_to_native.GetParameters())
    np.testing.assert_allclose(nib.load(folder / "image.nii.gz").affine,
                               GridSpec().ras_affine(), atol=1e-5)
    assert json.loads((folder / "preprocess.json").read_text())["grid"] == GridSpec().to_dict()


def test_skull_stripped_case_keeps_its_brain():
    result = preprocess(require(MS_T1))
    assert result.report["brain_mask_source"] == "skull-stripped input"
    reference = sitk.GetArrayFromImage(read_volume(MS_T1)) != 0
    assert dice(sitk.GetArrayFromImage(result.native_brain_mask), reference) >= 0.95


def test_given_brain_mask_is_used(ixi, tmp_path):
    mask_path = tmp_path / "mask.nii.gz"
    sitk.WriteImage(ixi.native_brain_mask, str(mask_path))
    result = preprocess(IXI_SCAN, brain_mask=mask_path)
    assert result.report["brain_mask_source"] == "given"
    assert np.array_equal(sitk.GetArrayFromImage(result.native_brain_mask),
                          sitk.GetArrayFromImage(ixi.native_brain_mask))


def test_raw_thick_slice_clinical_scan():
    result = preprocess(require(CLINICAL_T1))
    native = read_volume(CLINICAL_T1)
    assert same_geometry(result.native_brain_mask, native, tolerance=0.0)
    assert 1000 < result.report["quality"]["brain_volume_ml"] < 2000
    assert result.report["quality"]["dice_with_template_brain"] > 0.85


def test_same_input_and_seed_give_the_same_result_whatever_the_thread_count(ixi):
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    other = 1 if threads > 1 else 2  # N4 and the registration sum over threads otherwise
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(other)
    try:
        again = preprocess(IXI_SCAN)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    assert np.array_equal(sitk.GetArrayFromImage(again.image), sitk.GetArrayFromImage(ixi.image))
    assert again.template_to_native.GetParameters() == ixi.template_to_native.GetParameters()
    assert np.array_equal(sitk.GetArrayFromImage(again.native_brain_mask),
                          sitk.GetArrayFromImage(ixi.native_brain_mask))

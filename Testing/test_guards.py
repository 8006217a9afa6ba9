"""Guards before work: head geometry from the header, brain masks, option values, the memory
estimate, damaged files and DICOM series, stale staging folders, case tables. In-process and
on tiny synthetic volumes: each test takes well under a second."""

from __future__ import annotations

import gzip
import os
import time

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import oblique_image
from test_volumes import write_dicom_series

from NeuroADLib.batch import read_case_table
from NeuroADLib.errors import (
    EXIT_BAD_INPUT,
    EXIT_OUT_OF_MEMORY,
    EXIT_USAGE,
    BrainMaskError,
    CaseTableError,
    CorruptFileError,
    DicomSeriesError,
    ImplausibleVolumeError,
    NotEnoughMemory,
    OptionError,
)
from NeuroADLib.guards import (
    MEMORY_LIMIT_VARIABLE,
    MemoryModel,
    available_memory_mb,
    check_brain_mask,
    check_head_geometry,
    check_memory,
    check_options,
    check_run,
    check_scan,
)
from NeuroADLib.methods.registry import METHODS, validate_options
from NeuroADLib.outputs import atomic_output_folder, host_name, remove_stale_staging
from NeuroADLib.volumes import VolumeHeader, read_header, read_volume

EYE = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def header(size, spacing) -> VolumeHeader:
    return VolumeHeader(tuple(size), tuple(spacing), (0.0, 0.0, 0.0), EYE, 1, "32-bit float")


def write(path, size=(60, 70, 50), spacing=(3.0, 3.0, 3.0), array=None):
    if array is None:
        array = np.random.default_rng(0).random(size[::-1]).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


@pytest.mark.parametrize("size, spacing", [
    ((256, 224, 26), (0.9, 0.9, 5.5)),     # the clinical demo scan: thick slices
    ((120, 120, 90), (2.0, 2.0, 2.0)),     # IXI, downsampled
    ((182, 218, 182), (1.0, 1.0, 1.0)),    # MNI 1 mm
    ((240, 240, 155), (1.0, 1.0, 1.0)),    # BraTS
    ((512, 512, 320), (0.5, 0.5, 0.6)),    # high-resolution research scan
])
def test_head_mri_geometries_pass(size, spacing):
    check_head_geometry(header(size, spacing))


@pytest.mark.parametrize("size, spacing, words", [
    ((96, 96, 60), (20, 20, 20), ["voxel size 20 mm", "Is the header in cm (then 2 mm)?"]),
    ((256, 256, 180), (0.001,) * 3, ["voxel size 0.001 mm", "Is the header in m (then 1 mm)?"]),
    ((4, 4, 4), (1, 1, 1), ["4 x 4 x 4 voxels is too small to hold a brain"]),
    ((256, 256, 150), (0.1, 0.1, 0.1), ["field of view is 25.6 x 25.6 x 15 mm",
                                        "Is the header in cm (then 1 mm)?"]),
    ((600, 256, 256), (1, 1, 1), ["600 mm along x is outside the 80-500 mm"]),
    ((700, 700, 400), (0.4, 0.4, 0.4), ["196 million voxels", "at most 150 million"]),
    ((400, 400, 20), (0.3, 0.3, 8.0), ["27 times longer than wide"]),
    ((100, 480, 100), (1, 1, 1), ["4.8 times longer than wide"]),
])
def test_implausible_geometries_are_refused_with_their_numbers(size, spacing, words):
    with pytest.raises(ImplausibleVolumeError) as caught:
        check_head_geometry(header(size, spacing), "scan")
    assert caught.value.exit_code == EXIT_BAD_INPUT
    for word in words:
        assert word in str(caught.value)


def test_a_20_mm_header_is_refused_from_the_header(tmp_path):
    """What ran 13 minutes and reached 21.5 GB: 96 x 96 x 60 voxels of 20 mm. (That only the
    header is read is test_header_is_read_without_the_voxels.)"""
    path = tmp_path / "cm.nii.gz"
    nib.save(nib.Nifti1Image(np.random.rand(60, 96, 96).astype(np.float32),
                             np.diag([20.0, 20.0, 20.0, 1.0])), path)
    with pytest.raises(ImplausibleVolumeError, match="cm"):
        check_run(path, ["cadd"])


def test_header_is_read_without_the_voxels(tmp_path):
    path = write(tmp_path / "scan.nii.gz", (60, 70, 50), (3.0, 2.5, 3.5))
    found = read_header(path)
    assert found.size == (60, 70, 50) and found.voxels == 60 * 70 * 50
    assert np.allclose(found.spacing, (3.0, 2.5, 3.5))
    assert "60 x 70 x 50 voxels of 3 x 2.5 x 3.5 mm" in found.describe()


def test_brain_mask_of_another_geometry_names_both(tmp_path):
    scan = write(tmp_path / "scan.nii.gz", (60, 70, 50), (3.0, 3.0, 3.0))
    mask = write(tmp_path / "mask.nii.gz", (70, 70, 50), (3.0, 3.0, 3.0),
                 np.ones((50, 70, 70), np.uint8))
    with pytest.raises(BrainMaskError) as caught:
        check_brain_mask(mask, check_scan(scan))
    message = str(caught.value)
    assert "another geometry" in message
    assert "the mask is 70 x 70 x 50 voxels" in message
    assert "the scan 60 x 70 x 50 voxels" in message
    assert caught.value.exit_code == EXIT_BAD_INPUT


def test_an_empty_brain_mask_is_refused_and_a_brain_sized_one_passes(tmp_path):
    scan = check_scan(write(tmp_path / "scan.nii.gz", (60, 70, 50), (2.0, 2.0, 2.0)))
    mask = np.zeros((50, 70, 60), np.uint8)
    empty = write(tmp_path / "empty.nii.gz", (60, 70, 50), (2.0, 2.0, 2.0), mask)
    with pytest.raises(BrainMaskError, match="is empty"):
        check_brain_mask(empty, scan)
    mask[5:45, 5:65, 5:55] = 1  # 40 x 60 x 50 voxels of 8 uL: 960 mL
    check_brain_mask(write(tmp_path / "brain.nii.gz", (60, 70, 50), (2.0, 2.0, 2.0), mask), scan)


def test_a_lesion_mask_given_as_brain_mask_is_named(tmp_path):
    scan = write(tmp_path / "scan.nii.gz", (60, 70, 50), (2.0, 2.0, 2.0))
    mask = np.zeros((50, 70, 60), np.uint8)
    mask[20:25, 20:25, 20:25] = 1
    path = write(tmp_path / "mask.nii.gz", (60, 70, 50), (2.0, 2.0, 2.0), mask)
    with pytest.raises(BrainMaskError, match="marks 1 mL.*lesion mask"):
        check_brain_mask(path, check_scan(scan))


@pytest.mark.parametrize("options, words", [
    ({"cadd": {"t_int": "abc"}}, "cadd.t_int='abc' is not a number: it must be an integer from "
                                 "1 to 1000"),
    ({"cadd": {"t_int": 0}}, "out of range: it must be an integer from 1 to 1000"),
    ({"cadd": {"t_int": 2.5}}, "is not an integer"),
    ({"cadd": {"percentile": 100}}, "between 0 and 100 (both excluded)"),
    ({"cadd": {"seed": True}}, "is not a number"),
    ({"cadd": {"respacing": 7}}, "does not divide cadd.level_step=50"),
    ({"ldm": {"level_step": 500}}, "level_step must be at most t_int"),
    ({"zscore": {"t_int": 5}}, "zscore has no option t_int"),
    ({"nope": {"t_int": 5}}, "not a method"),
    ({"cadd": 5}, "must be a mapping"),
    (["cadd"], "must map method names"),
])
def test_bad_option_values_name_the_valid_range(options, words):
    with pytest.raises(OptionError) as caught:
        check_options(options)
    assert words in str(caught.value) and caught.value.exit_code == EXIT_USAGE


def test_options_come_back_as_their_types():
    assert check_options({"cadd": {"t_int": "1000", "percentile": 90, "respacing": 10.0}}) == {
        "cadd": {"t_int": 1000, "percentile": 90.0, "respacing": 10}}
    assert isinstance(check_options({"cadd": {"respacing": 10.0}})["cadd"]["respacing"], int)


@pytest.mark.parametrize("name", list(METHODS))
def test_every_option_has_a_spec_and_its_default_is_valid(name):
    info = METHODS[name]
    assert set(info.option_specs) == set(info.options)
    assert validate_options(name, dict(info.options)) == info.options


def test_memory_estimate_is_refused_above_the_limit(tmp_path, monkeypatch):
    path = write(tmp_path / "scan.nii.gz")
    monkeypatch.setenv(MEMORY_LIMIT_VARIABLE, "300")
    with pytest.raises(NotEnoughMemory) as caught:
        check_run(path, ["zscore", "cadd"])
    assert caught.value.exit_code == EXIT_OUT_OF_MEMORY
    needed = MemoryModel().estimate_mb(60 * 70 * 50, ["zscore", "cadd"])
    assert f"needs about {needed / 1024:.1f} GB" in str(caught.value)
    assert "is 0.3 GB" in str(caught.value)
    assert f"${MEMORY_LIMIT_VARIABLE}" in str(caught.value)
    monkeypatch.setenv(MEMORY_LIMIT_VARIABLE, "100000")
    check_run(path, ["zscore", "cadd"])


def test_memory_estimate_grows_with_voxels_and_methods():
    model = MemoryModel()
    assert model.estimate_mb(10**7, ["zscore"]) > model.estimate_mb(10**6, ["zscore"])
    assert model.estimate_mb(10**6, ["zscore", "cadd"]) > model.estimate_mb(10**6, ["zscore"])
    assert model.estimate_mb(10**6, ["mad_ad"]) > model.estimate_mb(10**6, ["zscore"])
    # every method family has its own measured working memory
    assert {info.family for info in METHODS.values()} <= set(model.family_mb)
    available, source = available_memory_mb()
    assert available is None or (available > 0 and source)


def test_a_huge_run_is_refused_by_the_machine_s_memory():
    huge = header((512, 512, 512), (0.5, 0.5, 0.5))
    with pytest.raises(NotEnoughMemory, match="needs about"):
        check_memory(huge, ["cadd"], MemoryModel(bytes_per_voxel=1e6))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_a_truncated_file_is_refused_as_damaged(tmp_path, suffix):
    path = write(tmp_path / f"scan{suffix}", (60, 70, 30), (3.0, 3.0, 4.0))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(CorruptFileError, match="truncated or damaged: its header describes "
                                               "60 x 70 x 30"):
        read_volume(path)


def test_a_corrupt_byte_in_a_compressed_file_is_refused(tmp_path):
    path = write(tmp_path / "scan.nii.gz", (60, 70, 30), (3.0, 3.0, 4.0))
    data = bytearray(gzip.compress(gzip.decompress(path.read_bytes()), compresslevel=1))
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError):
        read_volume(path)


def dicom_folder(tmp_path, name="dicom"):
    folder = tmp_path / name
    folder.mkdir()
    write_dicom_series(sitk.Round(oblique_image()), folder)
    return folder


def test_a_dicom_series_with_missing_slices_is_refused(tmp_path):
    folder = dicom_folder(tmp_path)
    (folder / "slice010.dcm").unlink()
    with pytest.raises(DicomSeriesError, match="missing slices: 5.00 mm between slices 10 and "
                                               "11 of 23, where its slices are 2.50 mm apart"):
        read_header(folder)
    with pytest.raises(DicomSeriesError):
        read_volume(folder)


def test_two_dicom_series_in_one_folder_are_refused(tmp_path):
    folder = dicom_folder(tmp_path)
    time.sleep(1.1)  # the helper's series UIDs come from the clock
    other = dicom_folder(tmp_path, "other")
    for path in other.iterdir():
        path.rename(folder / f"b_{path.name}")
    with pytest.raises(DicomSeriesError, match="mixes 2 DICOM series"):
        read_volume(folder)


def test_a_dicom_series_with_a_repeated_position_is_refused(tmp_path):
    folder = dicom_folder(tmp_path)
    image = sitk.ReadImage(str(folder / "slice005.dcm"))
    image.SetMetaData("0008|0018", image.GetMetaData("0008|0018") + ".9")
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(folder / "slice005b.dcm"))
    writer.Execute(image)
    with pytest.raises(DicomSeriesError, match="several images at one slice position"):
        read_header(folder)


def test_stale_staging_of_a_killed_run_is_removed_and_a_live_one_kept(tmp_path):
    out = tmp_path / "out"
    host = host_name()
    dead = tmp_path / f".out.partial-999999999@{host}-abc"  # no such process on this host
    dead_old = tmp_path / ".out.partial-999999999-abc"       # the naming before host names
    legacy = tmp_path / ".out.partial-x1y2z3"                # the naming before process ids
    alive = tmp_path / f".out.partial-{os.getppid()}@{host}-def"
    elsewhere = tmp_path / ".out.partial-999999999@node17.cluster-ghi"  # cannot be asked
    other = tmp_path / ".other.partial-999999999-abc"
    for folder in (dead, dead_old, legacy, alive, elsewhere, other):
        folder.mkdir()
        (folder / "anomaly_map.nii.gz").write_bytes(b"x")
    with atomic_output_folder(out) as staging:
        assert staging.name.startswith(f".out.partial-{os.getpid()}@{host}-")
        (staging / "report.json").write_text("{}")
    assert not dead.exists() and not dead_old.exists() and not legacy.exists()
    assert alive.exists() and elsewhere.exists() and other.exists()
    assert [p.name for p in out.iterdir()] == ["report.json"]
    assert remove_stale_staging(out) == []
    assert sorted(remove_stale_staging(out, any_host=True)) == sorted([alive, elsewhere])


def test_staging_in_its_own_folder_publishes_into_the_output(tmp_path):
    out, staging_dir = tmp_path / "cases" / "case1", tmp_path / "cases" / ".staging"
    with atomic_output_folder(out, staging_dir) as staging:
        assert staging.parent == staging_dir
        (staging / "report.json").write_text("{}")
    assert [p.name for p in out.iterdir()] == ["report.json"]
    assert list(staging_dir.iterdir()) == []
    with pytest.raises(RuntimeError), atomic_output_folder(tmp_path / "failed", staging_dir):
        raise RuntimeError("a failing run")
    assert list(staging_dir.iterdir()) == [] and not (tmp_path / "failed").exists()


def write_table(tmp_path, text: str, encoding="utf-8"):
    path = tmp_path / "cases.csv"
    path.write_bytes(text.encode(encoding))
    return path


@pytest.mark.parametrize("text, words", [
    ("", "is empty: a case table has a header line path,age,sex"),
    ("path,age,sex\n", "has no cases, only its header line"),
    ("path;age;sex\na.nii.gz;5;F\n", "lacks the column(s) path, age, sex (its columns: "
                                      "path;age;sex)"),
    ("path,age,sex,case\na.nii.gz,5,F,p1\nb.nii.gz,6,M,p1\n", "case name 'p1' is on lines 2 "
                                                              "and 3"),
    ("path,age,sex,case\na.nii.gz,5,F,../up\n", "'../up' is not a plain folder name"),
])
def test_unusable_case_tables_are_refused_before_any_case(tmp_path, text, words):
    with pytest.raises(CaseTableError) as caught:
        read_case_table(write_table(tmp_path, text))
    assert words in str(caught.value) and caught.value.exit_code == EXIT_BAD_INPUT


def test_a_table_that_is_not_text_is_refused(tmp_path):
    path = tmp_path / "cases.csv"
    path.write_bytes(b"path,age,sex\n\xff\xfe\x00garbage,\x9c,F\n")
    with pytest.raises(CaseTableError, match="not a CSV text table"):
        read_case_table(path)


def test_short_rows_and_spreadsheet_headers_are_read(tmp_path):
    """Excel's UTF-8 BOM and capitalised, padded headers; a short row is left to its run."""
    rows = read_case_table(write_table(tmp_path, "Path , AGE,Sex\na/s.nii.gz,54,f\nb/t.nii.gz\n"
                                       "a/s.nii.gz,60,M\n", "utf-8-sig"))
    assert [r["case"] for r in rows] == ["s", "t", "s_"]
    assert (rows[1]["age"], rows[1]["sex"]) == ("", "")
    assert rows[0]["path"] == str(tmp_path / "a" / "s.nii.gz")

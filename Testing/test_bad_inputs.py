"""Bad inputs through `neuroad run`, `neuroad batch` and the worker: each refused with its own
error type, exit code and message, in seconds, with no output left and the input untouched.
Tiny synthetic volumes; a few seconds per test (mostly the interpreter starting)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from conftest import oblique_image
from test_volumes import write_dicom_series

from NeuroADLib.errors import EXIT_BAD_INPUT, EXIT_OUT_OF_MEMORY, EXIT_USAGE
from NeuroADLib.guards import MEMORY_LIMIT_VARIABLE

RUN = ["--age", "50", "--sex", "F", "--method", "zscore"]


def neuroad(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "NeuroADLib", *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})


def worker(tmp_path, request: dict) -> tuple[int, list[dict]]:
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request))
    result = subprocess.run([sys.executable, "-m", "NeuroADLib.worker", str(path)],
                            capture_output=True, text=True, timeout=300)
    return result.returncode, [json.loads(line) for line in result.stdout.splitlines() if line]


def volume(path, shape=(60, 70, 50), voxel_mm=3.0):
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random(shape).astype(np.float32),
                             np.diag([voxel_mm] * 3 + [1.0])), path)
    return path


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def refused(result, code: int, words: str, out) -> None:
    assert result.returncode == code, result.stderr
    assert words in result.stderr, result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.partial-*"))


def test_a_header_in_cm_is_refused_naming_the_unit(tmp_path):
    scan = volume(tmp_path / "cm.nii.gz", (96, 96, 60), 20.0)
    before = digest(scan)
    result = neuroad("run", str(scan), *RUN, "--method", "cadd", "--out", str(tmp_path / "out"))
    refused(result, EXIT_BAD_INPUT, "voxel size 20 mm along x", tmp_path / "out")
    assert "Is the header in cm (then 2 mm)?" in result.stderr
    assert digest(scan) == before


def test_a_volume_too_small_for_a_brain(tmp_path):
    scan = volume(tmp_path / "tiny.nii.gz", (4, 4, 4), 1.0)
    result = neuroad("run", str(scan), *RUN, "--out", str(tmp_path / "out"))
    refused(result, EXIT_BAD_INPUT, "4 x 4 x 4 voxels is too small to hold a brain",
            tmp_path / "out")


def test_a_truncated_compressed_file(tmp_path):
    scan = volume(tmp_path / "scan.nii.gz")
    scan.write_bytes(scan.read_bytes()[:30000])
    before = digest(scan)
    result = neuroad("run", str(scan), *RUN, "--out", str(tmp_path / "out"))
    refused(result, EXIT_BAD_INPUT, "is truncated or damaged", tmp_path / "out")
    assert digest(scan) == before


def test_a_non_numeric_option_names_the_valid_range(tmp_path):
    scan = volume(tmp_path / "scan.nii.gz")
    result = neuroad("run", str(scan), *RUN, "--option", "cadd.t_int=abc",
                     "--out", str(tmp_path / "out"))
    refused(result, EXIT_USAGE, "cadd.t_int='abc' is not a number: it must be an integer from 1 "
            "to 1000", tmp_path / "out")
    result = neuroad("run", str(scan), *RUN, "--option", "cadd.percentile=120",
                     "--out", str(tmp_path / "out"))
    refused(result, EXIT_USAGE, "between 0 and 100", tmp_path / "out")


def test_a_brain_mask_of_another_geometry(tmp_path):
    scan = volume(tmp_path / "scan.nii.gz", (60, 70, 50), 3.0)
    mask = volume(tmp_path / "mask.nii.gz", (90, 105, 75), 2.0)
    result = neuroad("run", str(scan), *RUN, "--brain-mask", str(mask),
                     "--out", str(tmp_path / "out"))
    refused(result, EXIT_BAD_INPUT, "has another geometry than the scan", tmp_path / "out")
    assert "90 x 105 x 75 voxels of 2 x 2 x 2 mm" in result.stderr
    assert "60 x 70 x 50 voxels of 3 x 3 x 3 mm" in result.stderr


def test_a_run_larger_than_the_memory_left_is_refused(tmp_path):
    scan = volume(tmp_path / "scan.nii.gz")
    result = neuroad("run", str(scan), *RUN, "--out", str(tmp_path / "out"),
                     env={MEMORY_LIMIT_VARIABLE: "200"})
    refused(result, EXIT_OUT_OF_MEMORY, "This run needs about", tmp_path / "out")


def test_a_dicom_folder_with_missing_slices(tmp_path):
    folder = tmp_path / "dicom"
    folder.mkdir()
    write_dicom_series(oblique_image(size=(70, 80, 40), spacing=(2.0, 2.0, 2.5)), folder)
    (folder / "slice020.dcm").unlink()
    result = neuroad("run", str(folder), *RUN, "--out", str(tmp_path / "out"))
    refused(result, EXIT_BAD_INPUT, "is missing slices", tmp_path / "out")


def table(tmp_path, text: str):
    path = tmp_path / "cases.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, words", [
    ("path,age,sex\n", "has no cases, only its header line"),
    ("path,age,sex,case\na.nii.gz,50,F,p1\nb.nii.gz,60,M,p1\n", "case name 'p1' is on lines 2 "
                                                                "and 3"),
])
def test_a_case_table_that_cannot_be_used_runs_nothing(tmp_path, text, words):
    result = neuroad("batch", str(table(tmp_path, text)), "--method", "zscore",
                     "--out", str(tmp_path / "out"), "--quiet")
    refused(result, EXIT_BAD_INPUT, words, tmp_path / "out")


def test_a_short_row_fails_alone_and_the_batch_goes_on(tmp_path):
    scan = volume(tmp_path / "cm.nii.gz", (96, 96, 60), 20.0)
    cases = table(tmp_path, f"path,age,sex\n{scan}\n{scan},50\nmissing.nii.gz,40,M\n"
                            f"{scan},fifty,F\n")
    result = neuroad("batch", str(cases), "--method", "zscore", "--out", str(tmp_path / "out"),
                     "--quiet")
    assert result.returncode == EXIT_BAD_INPUT and "internal error" not in result.stderr
    assert "0 cases done, 4 failed" in result.stdout
    rows = list(csv.DictReader((tmp_path / "out" / "summary.csv").open()))
    assert [r["exit_code"] for r in rows] == [str(EXIT_BAD_INPUT)] * 4
    assert "Age is required" in rows[0]["message"]
    assert "Sex must be F or M" in rows[1]["message"]
    assert "not found" in rows[2]["message"]
    assert "'fifty' on line 5" in rows[3]["message"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["summary.csv"]


@pytest.mark.parametrize("flag, value", [("--seed", "-5"), ("--threads", "0")])
def test_negative_seeds_and_thread_counts_are_usage_errors(tmp_path, flag, value):
    result = neuroad("run", str(tmp_path / "scan.nii.gz"), *RUN, flag, value,
                     "--out", str(tmp_path / "out"))
    refused(result, EXIT_USAGE, "is not a whole number from", tmp_path / "out")


def test_batch_options_are_checked_before_any_case(tmp_path):
    result = neuroad("batch", str(table(tmp_path, "path,age,sex\na.nii.gz,50,F\n")),
                     "--method", "zscore", "--option", "cadd.t_int=abc",
                     "--out", str(tmp_path / "out"), "--quiet")
    refused(result, EXIT_USAGE, "integer from 1 to 1000", tmp_path / "out")


@pytest.mark.parametrize("change, code, kind, words", [
    ({"age": "abc"}, EXIT_USAGE, "UsageError", "'age' must be a number"),
    ({"methods": "zscore"}, EXIT_USAGE, "UsageError", "non-empty list"),
    ({"methods": ["nope"]}, EXIT_USAGE, "UsageError", "Unknown method(s) nope"),
    ({"options": {"cadd": {"t_int": "abc"}}}, EXIT_USAGE, "OptionError", "integer from 1 to"),
    ({"seed": -1}, EXIT_USAGE, "UsageError", "'seed' must be a whole number from 0 to"),
    ({"brain_mask": 5}, EXIT_USAGE, "UsageError", "'brain_mask' must be a path or null"),
    ({"input": "CM"}, EXIT_BAD_INPUT, "ImplausibleVolumeError", "Is the header in cm"),
])
def test_the_worker_reports_each_bad_request_as_its_error(tmp_path, change, code, kind, words):
    scan = volume(tmp_path / "cm.nii.gz", (96, 96, 60), 20.0)
    request = {"input": str(volume(tmp_path / "scan.nii.gz")), "age": 50, "sex": "F",
               "methods": ["zscore"], "out": str(tmp_path / "out"), "id": "r", **change}
    if request["input"] == "CM":
        request["input"] = str(scan)
    exit_code, events = worker(tmp_path, request)
    assert exit_code == code
    assert events[-1]["event"] == "error" and events[-1]["type"] == kind
    assert words in events[-1]["message"]
    assert not (tmp_path / "out").exists()

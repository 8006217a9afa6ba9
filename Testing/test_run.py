"""`neuroad run` with the bundled zscore model: outputs in the input's geometry, the report,
and each bad input or bad bundle with its exit code and no outputs."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import IXI_SCAN, REPO, require

from NeuroADLib.errors import EXIT_BAD_INPUT, EXIT_MODEL, EXIT_USAGE
from NeuroADLib.models import find_bundle
from NeuroADLib.volumes import read_volume, same_geometry

OUTPUTS = {"pseudo_healthy.nii.gz", "anomaly_map.nii.gz", "anomaly_mask.nii.gz", "report.json",
           "summary.png"}


def neuroad(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "NeuroADLib", *args], capture_output=True,
                          text=True, timeout=600, env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_run_writes_results_on_the_input_geometry(tmp_path):
    scan = require(IXI_SCAN)
    result = neuroad("run", str(scan), "--age", "38.8", "--sex", "M", "--method", "zscore",
                     "--out", str(tmp_path / "out"), "--threads", "2")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == OUTPUTS
    native = read_volume(scan)
    for name in ("pseudo_healthy.nii.gz", "anomaly_map.nii.gz", "anomaly_mask.nii.gz"):
        assert same_geometry(sitk.ReadImage(str(out / name)), native, tolerance=1e-4), name
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "anomaly_mask.nii.gz")))
    assert set(np.unique(mask)) <= {0, 1}
    report = json.loads((out / "report.json").read_text())
    assert report["covariates"] == {"age": 38.8, "sex": "M"}
    assert report["model"]["id"] == find_bundle("zscore").id
    assert report["threshold"]["rule"].startswith("healthy-calibrated")
    assert report["threshold"]["calibrated_at_these_options"] is True
    assert {"load_models", "preprocess", "method", "to_native"} <= set(report["timings_s"])
    # A healthy training-cohort scan flags little of its brain.
    brain_ml = report["preprocessing"]["quality"]["brain_volume_ml"]
    assert report["lesions"]["volume_ml"] < 0.05 * brain_ml


@pytest.mark.parametrize("args, code, message", [
    (["--age", "-3", "--sex", "F"], EXIT_BAD_INPUT, "outside 0-120"),
    (["--age", "130", "--sex", "F"], EXIT_BAD_INPUT, "outside 0-120"),
    (["--age", "40", "--sex", "X"], EXIT_USAGE, "invalid choice"),
    (["--sex", "F"], EXIT_USAGE, "--age"),
])
def test_bad_covariates(tmp_path, args, code, message):
    result = neuroad("run", str(tmp_path / "scan.nii.gz"), *args, "--method", "zscore",
                     "--out", str(tmp_path / "out"))
    assert result.returncode == code
    assert message in result.stderr
    assert not (tmp_path / "out").exists()


def test_unknown_method(tmp_path):
    result = neuroad("run", "scan.nii.gz", "--age", "40", "--sex", "F", "--method", "nope",
                     "--out", str(tmp_path / "out"))
    assert result.returncode == EXIT_USAGE and "invalid choice" in result.stderr


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_damaged_bundle_is_refused(tmp_path, damage):
    store = tmp_path / "store"
    shutil.copytree(find_bundle("zscore").folder, store / "zscore")
    weights = store / "zscore" / "zscore.safetensors"
    if damage == "corrupt":
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
    else:
        weights.unlink()
    scan = tmp_path / "scan.nii.gz"  # head-sized, so that the input guards let it through
    image = sitk.GetImageFromArray(np.random.rand(40, 40, 40).astype(np.float32))
    image.SetSpacing((4.0, 4.0, 4.0))
    sitk.WriteImage(image, str(scan))
    result = neuroad("run", str(scan), "--age", "40", "--sex", "F", "--method", "zscore",
                     "--out", str(tmp_path / "out"), env={"NEUROAD_MODELS": str(store)})
    assert result.returncode == EXIT_MODEL
    assert ("corrupt" if damage == "corrupt" else "missing") in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_batch_reports_failures_and_resumes(tmp_path):
    scan = require(IXI_SCAN)
    table = tmp_path / "cases.csv"
    table.write_text(f"path,age,sex\n{scan},38.8,M\n{tmp_path / 'missing.nii.gz'},50,F\n")
    out = tmp_path / "out"
    first = neuroad("batch", str(table), "--method", "zscore", "--out", str(out), "--quiet")
    assert first.returncode == EXIT_BAD_INPUT, first.stderr
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["status"] for r in rows] == ["ok", "failed"]
    assert rows[1]["exit_code"] == str(EXIT_BAD_INPUT) and "not found" in rows[1]["message"]
    assert float(rows[0]["zscore_abnormality_index"]) > 0
    report = out / "IXI012-HH-1211_T1" / "report.json"
    stamp = report.stat().st_mtime_ns
    second = neuroad("batch", str(table), "--method", "zscore", "--out", str(out), "--quiet")
    assert second.returncode == EXIT_BAD_INPUT
    assert report.stat().st_mtime_ns == stamp
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert rows[0]["status"] == "done before"


def test_unknown_method_option(tmp_path):
    result = neuroad("run", str(tmp_path / "scan.nii.gz"), "--age", "40", "--sex", "F",
                     "--method", "zscore", "--option", "zscore.t_int=1000",
                     "--out", str(tmp_path / "out"))
    assert result.returncode == EXIT_USAGE and "no option t_int" in result.stderr
    malformed = neuroad("run", "x.nii.gz", "--age", "40", "--sex", "F", "--method", "zscore",
                        "--option", "t_int", "--out", str(tmp_path / "out"))
    assert malformed.returncode == EXIT_USAGE and "METHOD.NAME=VALUE" in malformed.stderr


def test_options_other_than_the_calibrated_defaults_are_named():
    from NeuroADLib.methods.registry import changed_options

    assert changed_options("cadd", None) == {}
    assert changed_options("cadd", {"t_int": 250, "seed": 42}) == {}
    assert changed_options("cadd", {"t_int": 1000, "seed": 42}) == {"t_int": 1000}


def _recorded(ap: float, healthy_fpr: float = 0.01) -> dict:
    return {"benchmark": {
        "cases": "ten cases",
        "figures": {"thor": {"raw": {"ap": ap, "healthy_fpr": healthy_fpr}}},
        "zscore_on_the_same_cases": {"zscore": {"raw": {"ap": 0.466, "healthy_fpr": 0.01}}}}}


def test_benchmark_verdict_holds_the_method_to_the_zscore_bar():
    from NeuroADLib.pipeline import benchmark_verdict

    below = benchmark_verdict(_recorded(0.311), "thor", "raw")
    assert not below["meets_the_zscore_bar"]
    assert below["summary"] == ("below the zscore baseline on NeuroAD's benchmark: AP 0.311 "
                                "against 0.466")
    assert benchmark_verdict(_recorded(0.5), "thor", "raw")["meets_the_zscore_bar"]
    # more AP bought with more healthy false positives does not meet it
    assert not benchmark_verdict(_recorded(0.5, 0.02), "thor", "raw")["meets_the_zscore_bar"]
    assert benchmark_verdict(_recorded(0.5), "thor", "normative") is None  # not measured
    assert benchmark_verdict({}, "thor", "raw") is None


def test_the_slicer_result_says_when_its_method_is_below_the_bar():
    sys.path.insert(0, str(REPO / "NeuroAD"))
    pytest.importorskip("slicer")
    from NeuroADSlicerLib.results import ResultNodes

    from NeuroADLib.pipeline import benchmark_verdict

    def result(ap: float) -> ResultNodes:
        verdict = benchmark_verdict(_recorded(ap), "thor", "raw")
        return ResultNodes("thor", None, None, None, {"model": {"benchmark": verdict}}, None)

    assert result(0.311).benchmarkCaveat.startswith("below the zscore baseline")
    assert result(0.5).benchmarkCaveat == ""
    assert ResultNodes("zscore", None, None, None, {"model": {}}, None).benchmarkCaveat == ""


@pytest.mark.slow
def test_the_demo_command_runs_the_bundled_case(tmp_path):
    """The README's first command ends in `neuroad demo --out DIR`."""
    result = neuroad("demo", "--out", str(tmp_path / "demo"), "--threads", "2")
    assert result.returncode == 0, result.stderr
    assert {p.name for p in (tmp_path / "demo").iterdir()} == OUTPUTS
    assert "zscore: abnormality index" in result.stdout

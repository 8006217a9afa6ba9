"""The Slicer module's logic (NeuroADSlicerLib on slicer-core's real MRML) meeting bad inputs:
refused before a worker starts where the module can tell, otherwise the worker's error with
its code, naming the nodes rather than the temporary files, and nothing left behind."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (real MRML) is not installed; "
                             "pip install -c constraints.txt '.[test]'")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "NeuroAD"))

from NeuroADSlicerLib import engine, mrml, runs, worker  # noqa: E402

from NeuroADLib.errors import EXIT_BAD_INPUT, EXIT_USAGE  # noqa: E402

SETTINGS = worker.WorkerSettings([sys.executable], cancelGraceSeconds=5)


def node(scene, name: str, shape, spacing, array=None):
    if array is None:
        array = np.random.default_rng(0).random(shape).astype(np.float32)
    volume = mrml.volumeNodeFromArray(scene, array, name)
    volume.SetSpacing(spacing)
    return volume


def failed_run(tmp_path, volume, mask=None, options=None) -> runs.RunError:
    run = runs.SceneRun(volume, 50.0, "F", ["zscore"], mask, "cpu", options, SETTINGS,
                        tempRoot=tmp_path)
    with pytest.raises(runs.RunError) as caught:
        runs.runToCompletion(run)
    assert list(tmp_path.iterdir()) == []  # the temporary folder and any staging are gone
    return caught.value


def test_a_volume_node_with_a_header_in_cm_names_the_node(tmp_path):
    scene = slicer.vtkMRMLScene()
    error = failed_run(tmp_path, node(scene, "T1 scan", (60, 96, 96), (20.0, 20.0, 20.0)))
    assert error.code == EXIT_BAD_INPUT and error.kind == "ImplausibleVolumeError"
    assert str(error).startswith("'T1 scan': voxel size 20 mm")
    assert "input.nrrd" not in str(error)


def test_a_brain_mask_node_of_another_geometry_names_both(tmp_path):
    scene = slicer.vtkMRMLScene()
    scan = node(scene, "scan", (50, 70, 60), (3.0, 3.0, 3.0))
    mask = node(scene, "brain", (75, 105, 90), (2.0, 2.0, 2.0), np.ones((75, 105, 90), np.uint8))
    error = failed_run(tmp_path, scan, mask)
    assert error.code == EXIT_BAD_INPUT and error.kind == "BrainMaskError"
    assert "The brain mask 'brain' has another geometry" in str(error)
    assert "90 x 105 x 75 voxels of 2 x 2 x 2 mm" in str(error)


def test_options_out_of_range_are_refused_by_the_module_and_by_the_worker(tmp_path):
    with pytest.raises(ValueError, match="integer from 1 to 1000"):
        engine.parseOptions("cadd.t_int=abc")
    assert engine.parseOptions("cadd.t_int=1000, cadd.percentile=90") == {
        "cadd": {"t_int": 1000, "percentile": 90.0}}
    problems = engine.requestProblems(True, 50, "F", ["zscore"], "cadd.respacing=7")
    assert any("does not divide" in problem for problem in problems)
    scene = slicer.vtkMRMLScene()
    error = failed_run(tmp_path, node(scene, "scan", (50, 70, 60), (3.0, 3.0, 3.0)),
                       options={"cadd": {"seed": -1}})
    assert error.code == EXIT_USAGE and error.kind == "OptionError"


def test_case_tables_with_repeated_names_or_no_cases_are_refused(tmp_path):
    with pytest.raises(ValueError, match="p1 appear more than once"):
        runs.readCases([{"path": "a.nii.gz", "age": "5", "sex": "F", "case": "p1"},
                        {"path": "b.nii.gz", "age": "6", "sex": "M", "case": "p1"}])
    table = tmp_path / "cases.csv"
    table.write_text("path,age,sex\n")
    with pytest.raises(ValueError, match="has no cases"):
        runs.readCases(table)


def test_a_short_row_becomes_a_case_the_worker_refuses(tmp_path):
    table = tmp_path / "cases.csv"
    table.write_text("path,age,sex\nscan.nii.gz\n")
    [row] = runs.readCases(table)
    assert (row["age"], row["sex"], row["case"]) == (None, "", "scan")

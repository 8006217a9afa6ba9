"""The Slicer module's logic with the real worker and the bundled zscore model on the bundled
demo case (a raw clinical T1, about 20 s a run on 2 cores), on real MRML (slicer-core):
result nodes, progress, cooperative cancel, kill with clean-up, errors, batches.

`NeuroADLogic.process` and `runBatch` run from NeuroAD.py itself. slicer-core has no
application, Qt or scripted-module base classes, so only those are stood in for (`qt`,
`slicer.app`, `slicer.ScriptedLoadableModule`, `slicer.parameterNodeWrapper`, `slicer.i18n`);
the GUI classes in NeuroAD.py are imported but not exercised here.
"""

from __future__ import annotations

import csv
import importlib
import re
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (real MRML) is not installed; "
                             "pip install -c constraints.txt '.[test]'")
MODULE_DIR = Path(__file__).resolve().parents[1] / "NeuroAD"
sys.path.insert(0, str(MODULE_DIR))

from conftest import IXI, require  # noqa: E402
from NeuroADSlicerLib import engine, mrml, runs, worker  # noqa: E402

from NeuroADLib.errors import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_USAGE  # noqa: E402

DEMO, DEMO_AGE, DEMO_SEX = engine.demoCase()
IXI_CASES = ("IXI012-HH-1211", "IXI013-HH-1212")
SETTINGS = worker.WorkerSettings([sys.executable], cancelGraceSeconds=30)


class Application:
    """Stands in for slicer.app: counts the event processing a blocking run asks for."""

    def __init__(self) -> None:
        self.processedEvents = 0

    def processEvents(self) -> None:
        self.processedEvents += 1


class NoInstaller:
    """Everything is installed in this environment already."""

    def ensure(self, confirm: bool = True) -> bool:
        return True


def stand_ins() -> dict[str, types.ModuleType]:
    class Base:
        def __init__(self, *args) -> None:
            pass

    def module(name: str, **attributes) -> types.ModuleType:
        stand_in = types.ModuleType(name)
        stand_in.__dict__.update(attributes)
        return stand_in

    return {
        "qt": module("qt"), "ctk": module("ctk"),
        "slicer.i18n": module("slicer.i18n", tr=lambda text: text,
                              translate=lambda context, text: text),
        "slicer.parameterNodeWrapper": module(
            "slicer.parameterNodeWrapper", parameterNodeWrapper=lambda cls: cls,
            Choice=Base, WithinRange=Base),
        "slicer.ScriptedLoadableModule": module(
            "slicer.ScriptedLoadableModule", ScriptedLoadableModule=Base,
            ScriptedLoadableModuleWidget=Base, ScriptedLoadableModuleLogic=Base,
            ScriptedLoadableModuleTest=Base),
    }


@pytest.fixture(scope="module")
def module():
    """NeuroAD.py, imported with the stand-ins; the stand-ins are removed afterwards."""
    with pytest.MonkeyPatch.context() as patch:
        for name, stand_in in stand_ins().items():
            patch.setitem(sys.modules, name, stand_in)
        patch.setattr(slicer, "app", Application(), raising=False)
        patch.delitem(sys.modules, "NeuroAD", raising=False)
        yield importlib.import_module("NeuroAD")
        sys.modules.pop("NeuroAD", None)


@pytest.fixture(scope="module")
def logic(module):
    return module.NeuroADLogic(workerSettings=SETTINGS, installer=NoInstaller())


def load_demo(scene):
    """The demo scan as Slicer loads it (its reader reverses this file's slice order)."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "demo")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(DEMO))
    assert storage.ReadData(node)
    scene.RemoveNode(storage)
    node.CreateDefaultDisplayNodes()
    return node


def drive(run, until=None) -> list[runs.RunProgress]:
    """Poll a started run until it ends, or until `until(event)`; the progress seen."""
    seen = []
    while not run.finished:
        events = run.poll()  # a busy machine may deliver several steps in one poll
        seen.append(runs.RunProgress(**vars(run.progress)))
        if until is not None and any(until(event) for event in events):
            return seen
        time.sleep(0.1)
    return seen


@pytest.fixture(scope="module")
def demo_result(logic):
    """The console API's blocking call on the demo scan, placed in a study."""
    scene = slicer.vtkMRMLScene()
    volume = load_demo(scene)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = hierarchy.CreateStudyItem(
        hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "TCGA-FG-6692"), "MR")
    hierarchy.CreateItem(study, volume)
    result = logic.process(volume, DEMO_AGE, DEMO_SEX, "zscore", device="cpu")
    yield result, volume, study
    del scene  # nodes refer to their scene without keeping it alive: keep it until here


@pytest.mark.slow
def test_process_returns_result_nodes_on_the_input(demo_result):
    result, volume, study = demo_result
    assert slicer.app.processedEvents > 10  # the window would have stayed live
    assert result.anomalyMap.GetName() == "demo zscore anomaly map"
    assert result.segmentation.GetName() == "demo zscore anomaly"
    for node in (result.anomalyMap, result.pseudoHealthy):
        assert np.array_equal(mrml.ijkToRas(node), mrml.ijkToRas(volume))
        assert node.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions()
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(volume.GetScene())
    for node in result.nodes():
        assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == study
        assert node.GetAttribute("NeuroAD.model.id") == result.report["model"]["id"]


@pytest.mark.slow
def test_the_segmentation_is_the_map_above_the_calibrated_threshold(demo_result):
    result, volume, _ = demo_result
    anomaly = slicer.util.arrayFromVolume(result.anomalyMap)
    assert np.array_equal(mrml.segmentArray(result.segmentation, volume),
                          anomaly > result.calibratedThreshold)
    # The engine's own mask is thresholded on the model grid and resampled: close to ours.
    engineMl = result.report["lesions"]["volume_ml"]
    assert abs(result.liveThreshold.volumeMl - engineMl) < 0.15 * engineMl
    atCalibration = result.liveThreshold.voxelCount
    assert result.setThreshold(1.5 * result.calibratedThreshold) < atCalibration


@pytest.mark.slow
def test_the_pseudo_healthy_image_keeps_the_scan_outside_the_brain(demo_result):
    result, volume, _ = demo_result
    scan = slicer.util.arrayFromVolume(volume)
    pseudo = slicer.util.arrayFromVolume(result.pseudoHealthy)
    assert np.mean(pseudo == scan) > 0.5  # most of the field of view is not brain
    assert not np.array_equal(pseudo, scan)


def test_process_refuses_incomplete_inputs_before_any_work(logic):
    scene = slicer.vtkMRMLScene()
    volume = mrml.volumeNodeFromArray(scene, np.zeros((4, 4, 4), np.float32), "v")
    with pytest.raises(ValueError, match="enter the age.*choose the sex"):
        logic.process(volume, None, "X", "zscore")


@pytest.mark.slow
def test_cancel_stops_the_worker_cooperatively(logic, tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    scene = slicer.vtkMRMLScene()
    volume = load_demo(scene)
    nodes = scene.GetNumberOfNodes()
    run = logic.process(volume, DEMO_AGE, DEMO_SEX, "zscore", device="cpu", blocking=False)
    progress = drive(run, until=lambda event: event.get("stage", "").startswith("preprocess: n4"))
    assert progress[-1].etaSeconds is not None and 0 < progress[-1].fraction < 0.5
    run.cancel()
    assert run.state is runs.RunState.CANCELLING
    drive(run)
    assert run.state is runs.RunState.CANCELLED
    assert run.error.kind == "Cancelled" and run.error.code == EXIT_CANCELLED  # stopped itself
    assert list(tmp_path.iterdir()) == [] and scene.GetNumberOfNodes() == nodes


@pytest.mark.slow
def test_a_killed_worker_leaves_no_staging_folder(tmp_path):
    """Killed while it writes its outputs: the worker cannot clean up, the module does."""
    request = runs.buildRequest(DEMO, DEMO_AGE, DEMO_SEX, ["zscore"], tmp_path / "out",
                                device="cpu")
    run = runs.WorkerRun(request, tmp_path / "run", worker.WorkerSettings(
        [sys.executable], cancelGraceSeconds=0))
    run.start()
    progress = drive(run, until=lambda event: event.get("stage", "").startswith("zscore:"))
    fractions = [p.fraction for p in progress]
    assert fractions == sorted(fractions) and fractions[-1] > 0.5
    assert any(p.stage.startswith("preprocess: registration") for p in progress)
    assert list(tmp_path.glob(".out.partial-*")), "the worker should be writing now"
    run.cancel()
    drive(run)
    assert run.state is runs.RunState.CANCELLED and run.process.returncode != 0
    assert not list(tmp_path.glob(".out.partial-*")) and not (tmp_path / "out").exists()


def test_a_bad_input_is_a_run_error_with_its_code(tmp_path):
    request = runs.buildRequest(tmp_path / "missing.nii.gz", 50, "F", ["zscore"],
                                tmp_path / "out")
    run = runs.WorkerRun(request, tmp_path / "run", SETTINGS)
    run.start()
    drive(run)
    assert run.state is runs.RunState.FAILED
    assert run.error.code == EXIT_BAD_INPUT and "not found" in str(run.error)
    assert "3D brain MRI" in runs.errorHint(run.error.code)


@pytest.mark.slow
def test_a_batch_runs_every_case_and_resumes(logic, tmp_path):
    table = tmp_path / "cases.csv"
    table.write_text(f"path,age,sex,case\n{DEMO},{DEMO_AGE},{DEMO_SEX},demo\n"
                     f"missing.nii.gz,40,m,\n")
    out = tmp_path / "results"
    batch = logic.runBatch(table, "zscore", out, device="cpu", blocking=False)
    progress = drive(batch)
    fractions = [p.fraction for p in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any(p.stage.startswith("case 1 of 2, demo: preprocess") for p in progress)
    rows = list(csv.DictReader(batch.summaryPath.open()))
    assert [(r["case"], r["status"], r["exit_code"]) for r in rows] == [
        ("demo", "ok", "0"), ("missing", "failed", str(EXIT_BAD_INPUT))]
    assert float(rows[0]["zscore_abnormality_index"]) > 0
    assert (out / "demo" / "anomaly_map.nii.gz").is_file()

    summary = logic.runBatch(table, ["zscore"], out, device="cpu")
    rows = list(csv.DictReader(summary.open()))
    assert [r["status"] for r in rows] == ["done before", "failed"]


def ixi_table(path: Path) -> Path:
    """A case table of two IXI scans (age and sex from the cohort's participants.csv) and a
    row whose file is missing."""
    people = {row["subject"]: row for row in
              csv.DictReader((require(IXI) / "participants.csv").open())}
    rows = [f"{IXI / people[name]['file']},{people[name]['age']},{people[name]['sex']},{name}\n"
            for name in IXI_CASES]
    path.write_text("path,age,sex,case\n" + "".join(rows) + "missing.nii.gz,40,F,missing\n")
    return path


@pytest.mark.slow
def test_a_batch_on_a_local_dask_cluster_runs_every_case_and_resumes(logic, tmp_path):
    pytest.importorskip("distributed", reason="pip install 'neuroad[cluster]'")
    table = ixi_table(tmp_path / "cases.csv")
    out = tmp_path / "results"
    batch = logic.runBatch(table, "zscore", out, device="cpu", blocking=False,
                           cluster="local:2")
    progress = drive(batch)
    assert batch.state is runs.RunState.SUCCEEDED, batch.error
    fractions = [p.fraction for p in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any(re.fullmatch(r"[123]/3 cases, [01] failed, [012] running", p.stage)
               for p in progress)
    assert [(r["case"], r["status"], r["exit_code"]) for r in batch.summary] == [
        (IXI_CASES[0], "ok", 0), (IXI_CASES[1], "ok", 0), ("missing", "failed", EXIT_BAD_INPUT)]
    assert float(batch.summary[0]["zscore_abnormality_index"]) > 0
    assert "missing: failed: Input not found" in "\n".join(batch.log)
    assert all((out / name / "report.json").is_file() for name in IXI_CASES)

    cases = list(csv.DictReader(table.open()))  # as dicts, written to a table of its own
    summary = logic.runBatch(cases, ["zscore"], out, device="cpu", cluster="local:2")
    rows = list(csv.DictReader(summary.open()))
    assert [r["status"] for r in rows] == ["done before", "done before", "failed"]


def test_a_cluster_batch_with_a_bad_spec_fails_with_the_usage_code(logic, tmp_path,
                                                                    monkeypatch):
    pytest.importorskip("distributed", reason="pip install 'neuroad[cluster]'")
    (tmp_path / "temp").mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "temp"))
    out = tmp_path / "results"
    batch = logic.runBatch([{"path": "scan.nii.gz", "age": 40, "sex": "F"}], "zscore", out,
                           device="cpu", blocking=False, cluster="local:0")
    drive(batch)
    assert batch.state is runs.RunState.FAILED and batch.error.code == EXIT_USAGE
    assert "local:N needs a worker count" in str(batch.error)
    assert batch.summary == [] and list((tmp_path / "temp").iterdir()) == []
    assert not out.exists()  # refused before any output


def test_cases_are_read_like_neuroad_batch(tmp_path):
    table = tmp_path / "cases.csv"
    table.write_text("path,age,sex\na/scan.nii.gz,54,f\nb/scan.nii.gz,,M\n")
    rows = runs.readCases(table)
    assert [r["case"] for r in rows] == ["scan", "scan_"]
    assert rows[0]["path"] == str(tmp_path / "a" / "scan.nii.gz")
    assert (rows[0]["age"], rows[0]["sex"], rows[1]["age"]) == (54.0, "F", None)
    with pytest.raises(ValueError, match="not a number"):
        runs.readCases([{"path": "/x.nii.gz", "age": "fifty", "sex": "F"}])


def test_progress_counts_sub_steps():
    progress = runs.RunProgress.fromEvent({"event": "progress", "stage": "cadd: anomaly map",
                                           "step": 12, "total": 14, "substep": 25,
                                           "substeps": 100, "eta_s": 30.0})
    assert progress.fraction == pytest.approx((11 + 0.25) / 14)
    assert progress.text() == "cadd: anomaly map (25/100): about 30 s left for this step"
    assert runs.RunProgress.fromEvent({"stage": "read", "step": 1, "total": 4}).fraction == 0


@pytest.mark.slow
def test_process_takes_a_patients_visits_for_a_longitudinal_method(logic, tmp_path,
                                                                     monkeypatch):
    """logic.process([v1, v2], [a1, a2], sex, "longitudinal"): one ResultNodes per visit,
    each beside its own volume; one threshold steps through them (a tiny SDM model)."""
    pytest.importorskip("torch")
    from conftest import tiny_grid_sdm_store
    from NeuroADSlicerLib.results import setThresholdOfVisits

    monkeypatch.setenv("NEUROAD_MODELS", str(tiny_grid_sdm_store(tmp_path)))
    scene = slicer.vtkMRMLScene()
    first, second = load_demo(scene), load_demo(scene)
    second.SetName("demo follow-up")
    with pytest.raises(ValueError, match="one age per visit"):
        logic.process([first, second], [DEMO_AGE], DEMO_SEX, "longitudinal")
    with pytest.raises(ValueError, match="reads one scan at a time"):
        logic.process([first, second], [DEMO_AGE, DEMO_AGE + 1], DEMO_SEX, "zscore")
    results = logic.process([first, second], [DEMO_AGE, DEMO_AGE + 1], DEMO_SEX,
                            "longitudinal", device="cpu")
    assert [r.anomalyMap.GetName() for r in results] == [
        "demo longitudinal anomaly map", "demo follow-up longitudinal anomaly map"]
    for number, (result, volume) in enumerate(zip(results, (first, second), strict=True), 1):
        assert result.report["longitudinal"]["visit"] == number
        assert result.report["longitudinal"]["lafm"]["applied"] is True
        assert np.array_equal(mrml.ijkToRas(result.anomalyMap), mrml.ijkToRas(volume))
    low = setThresholdOfVisits(results, 0.0)
    high = setThresholdOfVisits(results, max(r.calibratedThreshold for r in results) * 2)
    assert all(h <= lo for h, lo in zip(high, low, strict=True))
    del scene


def site_controls(folder: Path, names: tuple[str, ...]) -> Path:
    """A site's controls as `neuroad prepare-cohort` reads them: participants.csv naming IXI
    scans (by absolute path) with their ages and sexes."""
    people = {row["subject"]: row for row in
              csv.DictReader((require(IXI) / "participants.csv").open())}
    folder.mkdir()
    (folder / "participants.csv").write_text("subject,age,sex,file\n" + "".join(
        f"{name},{people[name]['age']},{people[name]['sex']},{IXI / people[name]['file']}\n"
        for name in names))
    return folder


@pytest.mark.slow
def test_recalibration_on_site_controls_imports_a_bundle_that_serves_the_method(
        logic, tmp_path, monkeypatch):
    import json

    from NeuroADLib.models import list_bundles

    store = tmp_path / "store"
    monkeypatch.setenv("NEUROAD_MODELS", str(store))
    (tmp_path / "temp").mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "temp"))
    controls = site_controls(tmp_path / "controls", (*IXI_CASES, "IXI015-HH-1258"))
    run = logic.recalibrate("zscore", controls, device="cpu", blocking=False)
    progress = drive(run)
    assert run.state is runs.RunState.SUCCEEDED, run.error
    stages = list(dict.fromkeys(p.stage for p in progress))
    assert stages[:3] == list(runs.RecalibrationRun.STAGES) and stages[-1] == "done"
    fractions = [p.fraction for p in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert run.bundle.parent == store
    manifest = json.loads((run.bundle / "manifest.json").read_text())
    record = manifest["recalibrations"][-1]
    assert record["split"] == "all" and sorted(record["subjects"]) == sorted(
        (*IXI_CASES, "IXI015-HH-1258"))
    assert any(b.folder == run.bundle and b.method == "zscore" for b in list_bundles())
    assert list((tmp_path / "temp").iterdir()) == []  # its working folder is gone


def test_a_failed_recalibration_says_which_stage_and_imports_nothing(logic, tmp_path,
                                                                     monkeypatch):
    from NeuroADLib.errors import EXIT_BAD_INPUT

    store = tmp_path / "store"
    monkeypatch.setenv("NEUROAD_MODELS", str(store))
    run = logic.recalibrate("zscore", tmp_path / "no-such-controls", device="cpu",
                            blocking=False)
    drive(run)
    assert run.state is runs.RunState.FAILED and run.error.code == EXIT_BAD_INPUT
    assert str(run.error).startswith("Preparing the controls failed: ")
    assert run.bundle is None and not store.exists()

"""The Slicer module's MRML-facing code against real MRML classes (the `slicer-core` wheel):
volume nodes from arrays and files, the anomaly segmentation and its live threshold, the map's
display, subject-hierarchy placement and provenance attributes."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="slicer-core (real MRML) is not installed; "
                             "pip install -c constraints.txt '.[test]'")
vtk = pytest.importorskip("vtk")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "NeuroAD"))

from NeuroADSlicerLib import mrml  # noqa: E402
from NeuroADSlicerLib.results import loadConsensus, loadResults  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "NeuroADLib" / "data" / "demo" / \
    "tcga_fg_6692_t1.nii.gz"


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


def oblique_volume(scene, shape=(12, 14, 16), name="input", seed=0):
    """A float volume node with an oblique direction, anisotropic spacing and odd origin."""
    array = np.random.default_rng(seed).normal(100, 20, shape).astype(np.float32)
    node = mrml.volumeNodeFromArray(scene, array, name)
    rotation = vtk.vtkTransform()
    rotation.RotateWXYZ(25, 0.3, -0.5, 0.8)
    directions = vtk.vtkMatrix4x4()
    rotation.GetMatrix(directions)
    node.SetIJKToRASDirectionMatrix(directions)
    node.SetSpacing(1.1, 0.9, 2.5)
    node.SetOrigin(-12.5, 30.25, -7.0)
    return node, array


def test_array_to_volume_node_round_trip_is_exact_with_geometry(scene):
    reference, _ = oblique_volume(scene)
    array = np.random.default_rng(1).random((12, 14, 16)).astype(np.float32)
    node = mrml.volumeNodeFromArray(scene, array, "copy", reference)
    back = slicer.util.arrayFromVolume(node)
    assert back.dtype == np.float32 and np.array_equal(back, array)
    assert np.array_equal(mrml.ijkToRas(node), mrml.ijkToRas(reference))
    assert node.GetDisplayNode() is not None


def test_volume_file_has_the_node_geometry_in_lps(scene, tmp_path):
    node, array = oblique_volume(scene)
    image = sitk.ReadImage(str(mrml.writeVolumeFile(node, tmp_path / "v.nrrd")))
    assert np.array_equal(sitk.GetArrayFromImage(image), array)
    matrix = mrml.ijkToRas(node)
    for index in [(0, 0, 0), (15, 0, 0), (3, 13, 11)]:
        ras = matrix @ (*index, 1.0)
        lps = image.TransformIndexToPhysicalPoint(index)
        assert np.allclose(lps, (-ras[0], -ras[1], ras[2]), atol=1e-9)


def test_outputs_come_back_in_the_node_voxel_order(scene, tmp_path):
    """Slicer's reader stores this NIfTI's slices in reverse order; outputs computed on the
    file the module writes must still map voxel to voxel onto the node."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "demo")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(DEMO))
    assert storage.ReadData(node)
    loaded = slicer.util.arrayFromVolume(node)
    assert not np.array_equal(loaded, sitk.GetArrayFromImage(sitk.ReadImage(str(DEMO))))

    written = sitk.ReadImage(str(mrml.writeVolumeFile(node, tmp_path / "input.nrrd")))
    output = sitk.GetImageFromArray(sitk.GetArrayFromImage(written).astype(np.float32) * 2)
    output.CopyInformation(written)
    sitk.WriteImage(output, str(tmp_path / "map.nii.gz"))
    assert np.array_equal(mrml.readArrayOnGeometry(tmp_path / "map.nii.gz", node),
                          loaded.astype(np.float32) * 2)

    output.SetOrigin(np.add(output.GetOrigin(), (0.5, 0, 0)))
    sitk.WriteImage(output, str(tmp_path / "shifted.nii.gz"))
    with pytest.raises(ValueError, match="geometry"):
        mrml.readArrayOnGeometry(tmp_path / "shifted.nii.gz", node)


def test_live_threshold_makes_the_segment_what_numpy_predicts(scene):
    volume, _ = oblique_volume(scene, seed=2)
    anomaly = np.random.default_rng(3).random((12, 14, 16)).astype(np.float32)
    mapNode = mrml.volumeNodeFromArray(scene, anomaly, "map", volume)
    segmentation = mrml.createAnomalySegmentation(scene, "seg", volume)
    live = mrml.LiveThreshold(mapNode, segmentation)
    counts = []
    for threshold in (0.3, 0.8, 0.95, 0.3):
        counts.append(live.update(threshold))
        expected = anomaly > threshold
        assert counts[-1] == expected.sum()
        assert np.array_equal(mrml.segmentArray(segmentation, volume), expected)
    assert counts[0] > counts[1] > counts[2] and counts[3] == counts[0]
    voxelMl = 1.1 * 0.9 * 2.5 / 1000
    assert live.volumeMl == pytest.approx(counts[-1] * voxelMl)
    anomaly[:] = 0
    anomaly[4:6, 5:9, 2:3] = 1  # a small blob: the segment is stored cropped to it
    slicer.util.updateVolumeFromArray(mapNode, anomaly)
    assert live.update(0.5) == 8
    assert np.array_equal(mrml.segmentArray(segmentation, volume), anomaly > 0.5)


def test_segmentation_geometry_terminology_and_colour(scene):
    volume, _ = oblique_volume(scene)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    segmentation = mrml.createAnomalySegmentation(scene, "seg", volume)
    segment = segmentation.GetSegmentation().GetSegment(mrml.SEGMENT_ID)
    assert segment.GetName() == "Anomaly"
    assert segment.GetColor() == pytest.approx(mrml.SEGMENT_COLOR)
    assert "SCT^52988006^Lesion" in segment.GetTerminology()
    labelmap = slicer.vtkOrientedImageData()
    slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
        segmentation, mrml.SEGMENT_ID, labelmap)
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    assert np.allclose(slicer.util.arrayFromVTKMatrix(matrix), mrml.ijkToRas(volume))
    assert labelmap.GetDimensions() == volume.GetImageData().GetDimensions()
    assert segmentation.GetTransformNodeID() == transform.GetID()


def test_map_display_shows_only_the_suprathreshold_voxels(scene):
    volume, _ = oblique_volume(scene)
    mapNode = mrml.volumeNodeFromArray(scene, np.zeros((12, 14, 16), np.float32), "m", volume)
    colors = mrml.anomalyColorTable(scene)
    assert mrml.anomalyColorTable(scene) is colors and colors.GetNumberOfColors() == 256
    first, last = [0.0] * 4, [0.0] * 4
    colors.GetColor(0, first)
    colors.GetColor(255, last)
    assert sum(first[:3]) < 0.1 and last[0] > 0.9 and last[1] > 0.9
    mrml.showAnomalyMap(mapNode, colors, 2.5, 8.0)
    display = mapNode.GetDisplayNode()
    assert display.GetColorNodeID() == colors.GetID()
    assert display.GetApplyThreshold() and display.GetLowerThreshold() == pytest.approx(2.5)
    assert display.GetWindowLevelMin() == pytest.approx(0) and \
        display.GetWindowLevelMax() == pytest.approx(8)
    mrml.setMapThreshold(mapNode, 4.0)
    assert display.GetLowerThreshold() == pytest.approx(4.0)


def test_results_go_into_the_input_study(scene):
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = hierarchy.CreateStudyItem(
        hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "patient"), "study")
    volume, _ = oblique_volume(scene)
    hierarchy.CreateItem(study, volume)
    output = mrml.volumeNodeFromArray(scene, np.zeros((2, 2, 2)), "out")
    mrml.placeInStudy(output, volume)
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(output)) == study

    loose, _ = oblique_volume(scene, name="loose")
    other = mrml.volumeNodeFromArray(scene, np.zeros((2, 2, 2)), "other")
    mrml.placeInStudy(other, loose)
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(other)) == \
        hierarchy.GetSceneItemID()


def report_like(method="zscore", threshold=0.5) -> dict:
    return {"neuroad_version": "0.1.0", "method": method, "options": {},
            "input": {"path": "input.nrrd", "sha256": "ab" * 32},
            "covariates": {"age": 50.0, "sex": "F"},
            "model": {"id": f"{method}-test", "version": "1", "sha256": {"w.safetensors": "cd"}},
            "device": {"used": "cpu", "asked": "cpu"},
            "timings_s": {"preprocess": 12.5},
            "threshold": {"value": threshold, "rule": "healthy-calibrated"},
            "abnormality_index": 4.25, "abnormality_index_z": 2.75,
            "lesions": {"count": 2, "volume_ml": 1.5}}


def test_provenance_attributes_survive_saving_the_scene(scene, tmp_path):
    node = mrml.volumeNodeFromArray(scene, np.zeros((2, 2, 2)), "out")
    report = report_like()
    mrml.setProvenanceAttributes(node, report)
    assert node.GetAttribute("NeuroAD.model.id") == "zscore-test"
    assert float(node.GetAttribute("NeuroAD.abnormalityIndexZ")) == 2.75
    assert json.loads(node.GetAttribute("NeuroAD.timings")) == {"preprocess": 12.5}
    scene.SetURL(str(tmp_path / "scene.mrml"))
    assert scene.Commit()
    reloaded = slicer.vtkMRMLScene()
    reloaded.SetURL(str(tmp_path / "scene.mrml"))
    assert reloaded.Connect()
    assert mrml.provenance(reloaded.GetFirstNodeByName("out")) == report


def test_brain_mask_segmentation_is_written_on_the_input_grid(scene, tmp_path):
    volume, _ = oblique_volume(scene)
    mask = np.zeros((12, 14, 16), np.uint8)
    mask[3:9, 4:10, 5:12] = 1
    segmentation = mrml.createAnomalySegmentation(scene, "brain", volume)
    maskNode = mrml.volumeNodeFromArray(scene, mask.astype(np.float32), "maskmap", volume)
    mrml.LiveThreshold(maskNode, segmentation).update(0.5)
    written = sitk.ReadImage(str(mrml.writeMaskFile(segmentation, volume, tmp_path / "m.nrrd")))
    assert np.array_equal(sitk.GetArrayFromImage(written) > 0, mask > 0)
    assert np.allclose(written.GetOrigin(), sitk.ReadImage(
        str(mrml.writeVolumeFile(volume, tmp_path / "v.nrrd"))).GetOrigin())
    assert scene.GetFirstNodeByName("NeuroAD brain mask export") is None


def test_engine_outputs_become_result_nodes(scene, tmp_path):
    volume, _ = oblique_volume(scene)
    anomaly = np.random.default_rng(4).random((12, 14, 16)).astype(np.float32) * 2
    written = sitk.ReadImage(str(mrml.writeVolumeFile(volume, tmp_path / "input.nrrd")))
    for name, array in (("anomaly_map", anomaly), ("pseudo_healthy", anomaly + 100)):
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(written)
        sitk.WriteImage(image, str(tmp_path / f"{name}.nii.gz"))
    (tmp_path / "report.json").write_text(json.dumps(report_like(threshold=1.2)))

    result = loadResults(volume, tmp_path, ["zscore"])["zscore"]
    assert result.anomalyMap.GetName() == "input zscore anomaly map"
    assert result.pseudoHealthy.GetName() == "input zscore pseudo-healthy"
    assert np.array_equal(slicer.util.arrayFromVolume(result.anomalyMap), anomaly)
    assert np.array_equal(mrml.ijkToRas(result.pseudoHealthy), mrml.ijkToRas(volume))
    assert result.liveThreshold.voxelCount == (anomaly > 1.2).sum()
    assert result.setThreshold(1.8) == (anomaly > 1.8).sum()
    assert result.abnormalityIndex == 4.25
    for node in result.nodes():
        assert node.GetAttribute("NeuroAD.method") == "zscore"


def test_the_consensus_of_several_methods_becomes_a_volume_node(scene, tmp_path):
    volume, _ = oblique_volume(scene)
    assert loadConsensus(volume, tmp_path) is None  # a single-method run has none
    counts = np.random.default_rng(6).integers(0, 4, (12, 14, 16)).astype(np.uint8)
    written = sitk.ReadImage(str(mrml.writeVolumeFile(volume, tmp_path / "input.nrrd")))
    image = sitk.GetImageFromArray(counts)
    image.CopyInformation(written)
    sitk.WriteImage(image, str(tmp_path / "consensus.nii.gz"))
    node = loadConsensus(volume, tmp_path)
    assert node.GetName() == "input consensus"
    assert np.array_equal(slicer.util.arrayFromVolume(node), counts)
    assert np.array_equal(mrml.ijkToRas(node), mrml.ijkToRas(volume))


def test_threshold_update_on_a_256_cube_is_interactive(scene):
    """The benchmark (benchmarks/bench_threshold.py) measures this; here a loose bound
    catches a regression such as a round trip through a temporary labelmap node."""
    shape = (256, 256, 256)
    anomaly = np.random.default_rng(5).random(shape, dtype=np.float32)
    volume = mrml.volumeNodeFromArray(scene, anomaly, "map")
    live = mrml.LiveThreshold(volume, mrml.createAnomalySegmentation(scene, "s", volume))
    live.update(0.5)
    times = []
    for threshold in np.linspace(0.6, 0.99, 5):
        start = time.perf_counter()
        live.update(threshold)
        times.append(time.perf_counter() - start)
    assert statistics.median(times) < 0.25

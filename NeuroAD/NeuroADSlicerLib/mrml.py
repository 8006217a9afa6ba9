"""MRML-facing helpers: volume nodes and files, the anomaly segmentation and its live
threshold, the map's colour table, subject-hierarchy placement and provenance attributes.

Only VTK, MRML and SimpleITK are used (no slicer.app, no Qt), so everything here runs on the
MRML classes of the `slicer-core` wheel as well as inside Slicer. Files are exchanged with the
engine through SimpleITK with the node's exact geometry: Slicer's own readers may store the
voxels of a file in another order (e.g. slices reversed), which would make outputs and input
disagree voxel by voxel.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
GEOMETRY_TOLERANCE_MM = 1e-3

SEGMENT_ID = "anomaly"
SEGMENT_NAME = "Anomaly"
SEGMENT_COLOR = (0.2, 0.9, 0.55)  # green: stands out on the map's black-red-yellow colours
SEGMENT_TERMINOLOGY = (
    "Segmentation category and type - 3D Slicer General Anatomy list"
    "~SCT^49755003^Morphologically Altered Structure~SCT^52988006^Lesion~^^"
    "~Anatomic codes - DICOM master list~^^~^^"
)
BINARY_LABELMAP = "Binary labelmap"

COLOR_TABLE_NAME = "NeuroAD anomaly"
# Anchors of matplotlib's perceptually uniform "inferno" colour map (black -> red -> yellow).
INFERNO = ((0.0, (0, 0, 4)), (0.25, (87, 16, 110)), (0.5, (188, 55, 84)),
           (0.75, (249, 142, 9)), (1.0, (252, 255, 164)))

ATTRIBUTE_PREFIX = "NeuroAD."


def ijkToRas(volumeNode) -> np.ndarray:
    """The node's 4x4 IJK-to-RAS matrix."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def sitkImageFromVolume(volumeNode):
    """A SimpleITK copy of a volume node's voxels with its geometry (LPS, as ITK files use)."""
    import SimpleITK as sitk  # imported on use: it is slow to load at Slicer's startup

    image = sitk.GetImageFromArray(slicer.util.arrayFromVolume(volumeNode))
    origin, spacing, direction = _lpsGeometry(volumeNode)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction.ravel())
    return image


def _lpsGeometry(volumeNode) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lps = RAS_TO_LPS @ ijkToRas(volumeNode)[:3]
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    return lps[:, 3], spacing, lps[:, :3] / spacing


def writeVolumeFile(volumeNode, path: str | Path) -> Path:
    """Write a volume node's voxels and geometry (not its parent transform) to a file."""
    import SimpleITK as sitk

    sitk.WriteImage(sitkImageFromVolume(volumeNode), str(path))
    return Path(path)


def writeMaskFile(maskNode, referenceVolume, path: str | Path) -> Path:
    """Write a brain mask given as a labelmap (or scalar) volume or as a segmentation (its
    visible segments, on the reference volume's grid)."""
    if not maskNode.IsA("vtkMRMLSegmentationNode"):
        return writeVolumeFile(maskNode, path)
    scene = maskNode.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "NeuroAD brain mask export")
    try:
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportVisibleSegmentsToLabelmapNode(
                maskNode, labelmap, referenceVolume):
            raise ValueError(f"Cannot export the segmentation {maskNode.GetName()} as a mask.")
        return writeVolumeFile(labelmap, path)
    finally:
        scene.RemoveNode(labelmap)


def readArrayOnGeometry(path: str | Path, referenceNode) -> np.ndarray:
    """The voxels of an image file that has exactly the reference node's grid (the engine's
    outputs do), in the node's voxel order; a ValueError if the grids differ."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    origin, spacing, direction = _lpsGeometry(referenceNode)
    dimensions = referenceNode.GetImageData().GetDimensions()
    same = (image.GetSize() == tuple(dimensions)
            and np.allclose(image.GetOrigin(), origin, atol=GEOMETRY_TOLERANCE_MM)
            and np.allclose(image.GetSpacing(), spacing, atol=GEOMETRY_TOLERANCE_MM)
            and np.allclose(np.reshape(image.GetDirection(), (3, 3)), direction, atol=1e-5))
    if not same:
        raise ValueError(f"{path} does not have the geometry of {referenceNode.GetName()}.")
    return sitk.GetArrayFromImage(image)


def volumeNodeFromArray(scene, array: np.ndarray, name: str, reference=None,
                        nodeClass: str = "vtkMRMLScalarVolumeNode"):
    """A new volume node holding `array` (k, j, i); with the reference's exact geometry and
    parent transform when one is given."""
    node = scene.AddNewNodeByClass(nodeClass, name)
    if reference is not None:
        node.CopyOrientation(reference)
        node.SetAndObserveTransformNodeID(reference.GetTransformNodeID())
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array))
    node.CreateDefaultDisplayNodes()
    return node


def labelmapLike(volumeNode) -> slicer.vtkOrientedImageData:
    """An empty (zero) unsigned char labelmap on the volume node's grid."""
    labelmap = slicer.vtkOrientedImageData()
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    labelmap.SetImageToWorldMatrix(matrix)
    labelmap.SetExtent(volumeNode.GetImageData().GetExtent())
    labelmap.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    labelmap.GetPointData().GetScalars().Fill(0)
    return labelmap


def labelmapArray(labelmap) -> np.ndarray:
    """A (k, j, i) numpy view of a labelmap's voxels (writing to it changes the labelmap)."""
    i, j, k = labelmap.GetDimensions()
    return numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(k, j, i)


def createAnomalySegmentation(scene, name: str, referenceVolume):
    """A segmentation node with one empty "Anomaly" segment (lesion terminology, fixed
    colour) whose geometry is the reference volume's."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolume)
    node.SetAndObserveTransformNodeID(referenceVolume.GetTransformNodeID())
    segment = slicer.vtkSegment()
    segment.SetName(SEGMENT_NAME)
    segment.SetColor(*SEGMENT_COLOR)
    if hasattr(segment, "SetTerminology"):  # Slicer 5.8 and later
        segment.SetTerminology(SEGMENT_TERMINOLOGY)
    else:
        segment.SetTag(segment.GetTerminologyEntryTagName(), SEGMENT_TERMINOLOGY)
    segment.AddRepresentation(BINARY_LABELMAP, labelmapLike(referenceVolume))
    node.GetSegmentation().AddSegment(segment, SEGMENT_ID)
    return node


def segmentArray(segmentationNode, referenceVolume, segmentId: str = SEGMENT_ID) -> np.ndarray:
    """A segment as a (k, j, i) array on the reference volume's grid (segments are stored
    cropped to their content)."""
    scene = segmentationNode.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "NeuroAD segment export")
    try:
        segmentIds = vtk.vtkStringArray()
        segmentIds.InsertNextValue(segmentId)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentationNode, segmentIds, labelmap, referenceVolume):
            raise RuntimeError(f"Cannot export segment {segmentId!r}.")
        return slicer.util.arrayFromVolume(labelmap).copy()
    finally:
        scene.RemoveNode(labelmap)


class LiveThreshold:
    """The anomaly segment as `map > threshold`, fast enough to follow a slider: the map is
    read through a view of its node's voxels and the labelmap is allocated once, so an update
    is one numpy comparison and one segment replacement, in-process."""

    def __init__(self, mapNode, segmentationNode, segmentId: str = SEGMENT_ID):
        self.mapNode = mapNode
        self.segmentationNode = segmentationNode
        self.segmentId = segmentId
        self.labelmap = labelmapLike(mapNode)
        self._mask = labelmapArray(self.labelmap).view(bool)
        self.threshold = float("nan")
        self.voxelCount = 0

    def update(self, threshold: float) -> int:
        """Make the segment the map's voxels above `threshold`; returns their number."""
        np.greater(slicer.util.arrayFromVolume(self.mapNode), threshold, out=self._mask)
        self.labelmap.Modified()
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        if not logic.SetBinaryLabelmapToSegment(self.labelmap, self.segmentationNode,
                                                self.segmentId, logic.MODE_REPLACE,
                                                self.labelmap.GetExtent()):
            raise RuntimeError(f"Cannot update segment {self.segmentId!r} of "
                               f"{self.segmentationNode.GetName()}.")
        self.threshold = float(threshold)
        self.voxelCount = int(np.count_nonzero(self._mask))
        return self.voxelCount

    @property
    def volumeMl(self) -> float:
        """Volume of the segment in millilitres."""
        return self.voxelCount * abs(np.linalg.det(ijkToRas(self.mapNode)[:3, :3])) / 1000.0


def anomalyColorTable(scene):
    """The scene's "NeuroAD anomaly" colour table (inferno, 256 entries), created once."""
    node = scene.GetFirstNode(COLOR_TABLE_NAME, "vtkMRMLColorTableNode")
    if node is not None:
        return node
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", COLOR_TABLE_NAME)
    node.SetTypeToUser()
    node.SetNumberOfColors(256)
    for index, (red, green, blue) in enumerate(infernoColors(256)):
        node.SetColor(index, f"{index}", red, green, blue, 1.0)
    return node


def infernoColors(count: int) -> np.ndarray:
    """`count` RGB colours in [0, 1], interpolated between the inferno anchors."""
    positions = np.linspace(0.0, 1.0, count)
    anchors = np.array([position for position, _ in INFERNO])
    rgb = np.array([color for _, color in INFERNO], dtype=float) / 255.0
    return np.stack([np.interp(positions, anchors, rgb[:, c]) for c in range(3)], axis=1)


def showAnomalyMap(mapNode, colorNode, threshold: float, maximum: float) -> None:
    """Colour the map from 0 to `maximum` and hide voxels at or below `threshold`, so that as a
    foreground layer it shows only the suprathreshold voxels."""
    display = mapNode.GetDisplayNode()
    display.SetAndObserveColorNodeID(colorNode.GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, max(float(maximum), 1e-6))
    display.AutoThresholdOff()
    display.ApplyThresholdOn()
    setMapThreshold(mapNode, threshold)


def setMapThreshold(mapNode, threshold: float) -> None:
    """Instant feedback while the slider moves: only the map's display threshold changes."""
    display = mapNode.GetDisplayNode()
    display.SetLowerThreshold(float(threshold))
    display.SetUpperThreshold(float(np.finfo(np.float32).max))


def matchWindowLevel(volumeNode, referenceNode) -> None:
    """Show a volume with the reference's window and level (pseudo-healthy next to input)."""
    reference = referenceNode.GetDisplayNode()
    if reference is not None:
        display = volumeNode.GetDisplayNode()
        display.AutoWindowLevelOff()
        display.SetWindowLevel(reference.GetWindow(), reference.GetLevel())


def placeInStudy(node, inputNode) -> None:
    """Put a node in the subject-hierarchy study of the input (or beside the input when the
    input belongs to no study)."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(node.GetScene())
    inputItem = hierarchy.GetItemByDataNode(inputNode)
    parent = hierarchy.GetSceneItemID()
    if inputItem:
        parent = (hierarchy.GetItemAncestorAtLevel(inputItem, "Study")
                  or hierarchy.GetItemParent(inputItem))
    item = hierarchy.GetItemByDataNode(node) or hierarchy.CreateItem(parent, node)
    hierarchy.SetItemParent(item, parent)


def setProvenanceAttributes(node, report: dict) -> None:
    """Record a run's provenance (from its report.json) as node attributes NeuroAD.*, the whole
    report under NeuroAD.report; they are saved with the scene."""
    values = {
        "method": report["method"],
        "version": report["neuroad_version"],
        "model.id": report["model"]["id"],
        "model.version": report["model"]["version"],
        "model.sha256": json.dumps(report["model"]["sha256"], sort_keys=True),
        "device": report["device"]["used"],
        "age": report["covariates"]["age"],
        "sex": report["covariates"]["sex"],
        "options": json.dumps(report["options"], sort_keys=True),
        "threshold": report["threshold"]["value"],
        "thresholdRule": report["threshold"]["rule"],
        "abnormalityIndex": report["abnormality_index"],
        "abnormalityIndexZ": report["abnormality_index_z"],
        "outOfDistribution": json.dumps(
            report.get("out_of_distribution", {}).get("warnings", [])),
        "input.sha256": report["input"]["sha256"],
        "timings": json.dumps(report["timings_s"], sort_keys=True),
        "report": json.dumps(report, default=float),
    }
    for key, value in values.items():
        node.SetAttribute(ATTRIBUTE_PREFIX + key, str(value))


def provenance(node) -> dict | None:
    """The report stored on a node by setProvenanceAttributes, or None."""
    text = node.GetAttribute(ATTRIBUTE_PREFIX + "report")
    return json.loads(text) if text else None

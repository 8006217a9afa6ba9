"""A finished run's output files as MRML nodes beside the input."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .mrml import (
    LiveThreshold,
    anomalyColorTable,
    createAnomalySegmentation,
    matchWindowLevel,
    placeInStudy,
    readArrayOnGeometry,
    setProvenanceAttributes,
    showAnomalyMap,
    volumeNodeFromArray,
)

MAP_DISPLAY_PERCENTILE = 99.9  # the colour scale's top: robust to a few extreme voxels
CONSENSUS_FILE = "consensus.nii.gz"  # written by the engine when several methods ran


@dataclass
class ResultNodes:
    """One method's results: pseudo-healthy volume, anomaly map, anomaly segmentation (kept at
    `liveThreshold.threshold` by `setThreshold`) and the engine's report."""

    method: str
    pseudoHealthy: object
    anomalyMap: object
    segmentation: object
    report: dict
    liveThreshold: LiveThreshold

    @property
    def calibratedThreshold(self) -> float:
        """The model's healthy-calibrated threshold (the engine's default)."""
        return float(self.report["threshold"]["value"])

    @property
    def abnormalityIndex(self) -> float:
        return float(self.report["abnormality_index"])

    @property
    def abnormalityIndexZ(self) -> float:
        return float(self.report["abnormality_index_z"])

    @property
    def distributionWarnings(self) -> list[str]:
        """The engine's out-of-distribution warnings for this scan (numbers with their healthy
        ranges); empty when the scan looks like the healthy training scans."""
        return list(self.report.get("out_of_distribution", {}).get("warnings", []))

    @property
    def benchmarkCaveat(self) -> str:
        """The engine's sentence when the model's recorded benchmark puts the method below
        NeuroAD's zscore bar; empty otherwise (or when the model records no benchmark)."""
        verdict = self.report.get("model", {}).get("benchmark")
        return "" if not verdict or verdict["meets_the_zscore_bar"] else verdict["summary"]

    def setThreshold(self, threshold: float) -> int:
        """Re-threshold the segmentation (in-process); returns the voxel count."""
        return self.liveThreshold.update(threshold)

    def nodes(self) -> list:
        return [self.pseudoHealthy, self.anomalyMap, self.segmentation]


def setThresholdOfVisits(results: list[ResultNodes], threshold: float) -> list[int]:
    """One threshold for every visit of a longitudinal run (stepping through the visits shows
    them alike); returns each visit's voxel count."""
    return [result.setThreshold(threshold) for result in results]


def methodFolder(outFolder: Path, method: str, methods: list[str]) -> Path:
    """Where the engine writes a method's outputs (a sub-folder when several methods ran)."""
    return outFolder / method if len(methods) > 1 else outFolder


def loadResults(inputVolume, outFolder: Path, methods: list[str]) -> dict[str, ResultNodes]:
    """Create the result nodes of every method from the engine's output folder."""
    return {method: loadMethodResult(inputVolume, methodFolder(Path(outFolder), method, methods))
            for method in methods}


def loadMethodResult(inputVolume, folder: Path) -> ResultNodes:
    """Nodes named "<input> <method> ...", on the input's exact geometry and parent transform,
    in the input's study, with the report's provenance as attributes; the segmentation is the
    map above the model's calibrated threshold."""
    scene = inputVolume.GetScene()
    report = json.loads((folder / "report.json").read_text())
    base = f"{inputVolume.GetName()} {report['method']}"
    pseudo = volumeNodeFromArray(
        scene, readArrayOnGeometry(folder / "pseudo_healthy.nii.gz", inputVolume),
        f"{base} pseudo-healthy", inputVolume)
    matchWindowLevel(pseudo, inputVolume)
    mapArray = readArrayOnGeometry(folder / "anomaly_map.nii.gz", inputVolume).astype(np.float32)
    anomalyMap = volumeNodeFromArray(scene, mapArray, f"{base} anomaly map", inputVolume)
    segmentation = createAnomalySegmentation(scene, f"{base} anomaly", inputVolume)
    result = ResultNodes(report["method"], pseudo, anomalyMap, segmentation, report,
                         LiveThreshold(anomalyMap, segmentation))
    result.setThreshold(result.calibratedThreshold)
    showAnomalyMap(anomalyMap, anomalyColorTable(scene), result.calibratedThreshold,
                   max(_displayMaximum(mapArray), result.calibratedThreshold))
    for node in result.nodes():
        setProvenanceAttributes(node, report)
        placeInStudy(node, inputVolume)
    return result


def loadConsensus(inputVolume, outFolder: Path):
    """The "<input> consensus" volume (how many methods flag each voxel at their calibrated
    thresholds), coloured from 1 to the number of methods with 0 hidden, in the input's
    study; None when the run had a single method."""
    path = Path(outFolder) / CONSENSUS_FILE
    if not path.is_file():
        return None
    scene = inputVolume.GetScene()
    counts = readArrayOnGeometry(path, inputVolume).astype(np.float32)
    node = volumeNodeFromArray(scene, counts, f"{inputVolume.GetName()} consensus", inputVolume)
    showAnomalyMap(node, anomalyColorTable(scene), 0.5, max(float(counts.max()), 1.0))
    placeInStudy(node, inputVolume)
    return node


def _displayMaximum(mapArray: np.ndarray) -> float:
    positive = mapArray[mapArray > 0]
    return float(np.percentile(positive, MAP_DISPLAY_PERCENTILE)) if positive.size else 1.0

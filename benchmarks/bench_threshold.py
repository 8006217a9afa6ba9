"""Time of one threshold-slider update of the Slicer module (anomaly map -> segmentation node)
on real MRML from the `slicer-core` wheel: the numpy comparison, the segment replacement, and
the voxel count shown beside the slider. Also times the map's display-threshold change that
gives instant feedback while the slider moves. Goal: under 50 ms on a 256^3 map.

    python benchmarks/bench_threshold.py [--size 256] [--repeat 21]

Not measured (no Slicer application here): the slice views' re-rendering that the segment
change triggers inside Slicer.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import slicer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "NeuroAD"))
from NeuroADSlicerLib import mrml  # noqa: E402


def smooth_map(size: int, seed: int = 0) -> np.ndarray:
    """A float32 map with blob-like structure (so thresholds give realistic segment shapes)."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((size // 16,) * 3, dtype=np.float32)
    return np.kron(coarse, np.ones((16, 16, 16), np.float32)) * 6.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="edge of the cubic map")
    parser.add_argument("--repeat", type=int, default=21, help="timed updates")
    args = parser.parse_args()

    scene = slicer.vtkMRMLScene()
    anomaly = smooth_map(args.size)
    volume = mrml.volumeNodeFromArray(scene, anomaly, "map")
    segmentation = mrml.createAnomalySegmentation(scene, "anomaly", volume)
    live = mrml.LiveThreshold(volume, segmentation)
    mrml.showAnomalyMap(volume, mrml.anomalyColorTable(scene), 3.0, 6.0)
    live.update(3.0)  # the first update allocates the segment's internal labelmap

    thresholds = np.linspace(1.0, 5.0, args.repeat)
    updates, displays = [], []
    for threshold in thresholds:
        start = time.perf_counter()
        live.update(threshold)
        updates.append(time.perf_counter() - start)
        start = time.perf_counter()
        mrml.setMapThreshold(volume, threshold)
        displays.append(time.perf_counter() - start)
    assert live.voxelCount == int((anomaly > thresholds[-1]).sum())

    print(f"map {args.size}^3 ({anomaly.size / 1e6:.1f} M voxels), {args.repeat} updates")
    print(f"segmentation update: median {1000 * statistics.median(updates):.1f} ms, "
          f"min {1000 * min(updates):.1f} ms, max {1000 * max(updates):.1f} ms")
    print(f"display threshold:   median {1000 * statistics.median(displays):.3f} ms")


if __name__ == "__main__":
    main()

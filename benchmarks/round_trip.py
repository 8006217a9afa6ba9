"""Round trip input -> grid -> native for every subject of a prepared cohort: the Pearson
correlation, inside the native brain mask, between the input and its preprocessed grid image
mapped back with the exact inverse.

    python benchmarks/round_trip.py CACHE --data ../shared/data/ixi_t1_2mm
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from NeuroADLib.preprocessing import grid_to_native, load_preprocessed
from NeuroADLib.preprocessing.files import NATIVE_BRAIN_MASK
from NeuroADLib.volumes import read_volume, same_geometry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    args = parser.parse_args()
    correlations, geometry_ok = [], 0
    for row in csv.DictReader((args.cache / "cohort.csv").open()):
        folder = args.cache / "subjects" / row["subject"]
        case = load_preprocessed(folder)
        native = read_volume(args.data / row["file"])
        back = grid_to_native(case.image, case.template_to_native, native)
        geometry_ok += same_geometry(back, native, tolerance=0.0)
        brain = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / NATIVE_BRAIN_MASK))) > 0
        inside = brain & (sitk.GetArrayFromImage(back) > 0)
        correlations.append(np.corrcoef(sitk.GetArrayFromImage(native)[inside],
                                        sitk.GetArrayFromImage(back)[inside])[0, 1])
    values = np.array(correlations)
    print(json.dumps({"subjects": len(values), "identical_geometry": geometry_ok,
                      "correlation": {"min": values.min(), "median": float(np.median(values)),
                                      "max": values.max()}}, indent=2, default=float))


if __name__ == "__main__":
    main()

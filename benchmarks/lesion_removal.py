"""How much of a synthetic lesion does a method's pseudo-healthy image remove?

For every lesioned case of a benchmark pack whose healthy original is in the same pack, from
the maps `neuroad evaluate` saved (|x - x^| for the reconstruction methods):

    removal = (mean map of the lesioned case in the lesion - the same for its healthy case)
              / mean |x_lesioned - x_healthy| in the lesion

1 means the lesion is entirely undone in the pseudo-healthy image, 0 that it is reproduced
(the map then shows only the reconstruction error a healthy brain has there).

    python benchmarks/lesion_removal.py PACK.npz RESULTS/maps/METHOD [RESULTS/maps/METHOD ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from NeuroADLib.gridpack import read_pack


def lesion_removal(pack: str, maps_dir: str) -> dict:
    grid = read_pack(pack)
    index = {row["case"]: i for i, row in enumerate(grid.rows)}
    healthy = {row["subject"]: row["case"] for row in grid.rows if row["kind"] == "healthy"}
    removal = {}
    for i, row in enumerate(grid.rows):
        if row["kind"] == "healthy" or row["subject"] not in healthy:
            continue
        lesion = grid.volume(i, "lesion_mask")
        original = index[healthy[row["subject"]]]
        deviation = np.abs(grid.volume(i, "image") - grid.volume(original, "image"))[lesion]
        lesioned_map = np.load(Path(maps_dir) / f"{row['case']}.npy")[lesion]
        healthy_map = np.load(Path(maps_dir) / f"{healthy[row['subject']]}.npy")[lesion]
        removal[row["case"]] = float((lesioned_map.mean() - healthy_map.mean())
                                     / deviation.mean())
    values = np.array(list(removal.values()))
    return {"cases": len(values), "mean": float(values.mean()),
            "median": float(np.median(values)), "per_case": removal}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pack")
    parser.add_argument("maps", nargs="+")
    args = parser.parse_args()
    print(json.dumps({maps: lesion_removal(args.pack, maps) for maps in args.maps}, indent=2))


if __name__ == "__main__":
    main()

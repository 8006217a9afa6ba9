"""The SDM variants' maps of a grid case table, one SDM reconstruction a case: each case's
pixel distance D_p and feature distance D_f are kept in MAPS (one .npz a case, as
`sdm_fam_acquisitions.py` keeps them, and reused on a re-run), and each variant's unfiltered
map is written in `neuroad evaluate`'s layout, OUT/maps/METHOD/CASE.npy: `sdm` D_p, `sdm_fam`
and `longitudinal` eq. 3.5 at the bundle's settings (on one scan the longitudinal method is
SDM + FAM). `postprocessing_sweep.py` and `normative_maps.py --post-filter
METHOD=median=5,erosion=3` then score them as the methods output them: the methods' own
post-processing is that median filter and erosion applied to these maps.

    python benchmarks/sdm_maps.py --bundle NeuroADLib/models/bundled/sdm-ixi-2mm \
        --cases BENCH/synthetic/cases.csv --maps DIR --out RESULTS/synthetic [--threads 2]

Cases of another contrast than T1 are skipped.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch
from sdm_fam_acquisitions import distances

from NeuroADLib.methods.base import load_method
from NeuroADLib.methods.sdm import fam_score

VARIANTS = ("sdm", "sdm_fam", "longitudinal")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--cases", required=True, help="grid case table (case, contrast, image, "
                        "brain_mask; relative paths from its folder)")
    parser.add_argument("--maps", required=True, help="folder keeping each case's D_p and D_f")
    parser.add_argument("--out", required=True, help="`neuroad evaluate --out` layout")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    fam = load_method("sdm_fam", args.bundle)
    table, maps, out = Path(args.cases), Path(args.maps), Path(args.out)
    maps.mkdir(parents=True, exist_ok=True)
    for variant in VARIANTS:
        (out / "maps" / variant).mkdir(parents=True, exist_ok=True)
    with table.open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("contrast", "t1") == "t1"]
    for number, row in enumerate(rows, start=1):
        stored = maps / f"{row['case']}.npz"
        if not stored.is_file():
            np.savez_compressed(stored, **distances(
                fam, str(table.parent / row["image"]), str(table.parent / row["brain_mask"])))
        with np.load(stored) as data:
            pixel, feature, brain = data["pixel"], data["feature"], data["brain"] > 0
        score = fam_score(pixel, feature, brain, fam.model.settings.pixel_weight,
                          fam.model.scale_region(brain))
        unfiltered = {"sdm": pixel * brain, "sdm_fam": score, "longitudinal": score}
        for variant, volume in unfiltered.items():
            np.save(out / "maps" / variant / f"{row['case']}.npy", volume.astype(np.float16))
        print(f"{row['case']} ({number}/{len(rows)})", flush=True)


if __name__ == "__main__":
    main()

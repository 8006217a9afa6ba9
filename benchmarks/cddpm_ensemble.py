"""How much of cDDPM's healthy reconstruction error is the noise draw, and what averaging
draws or choosing levels does to its AP.

For the cases of a benchmark manifest (a slice of its subjects: choose subjects the figures
you compare with were not measured on), one-step reconstructions at each noise level with
several seeds. Prints, on the healthy cases, the mean |x_rec(seed a) - x_rec(seed b)| inside
the brain next to the mean |x - x_rec| per level (a well-trained denoiser's estimate barely
depends on the draw), and the mean AP of the lesioned cases for ensembles of levels x draws,
with the 99th percentile of the healthy cases' maps (the floor a lesion has to rise above).

    python benchmarks/cddpm_ensemble.py --bundle NeuroADLib/models/bundled/cddpm-ixi-2mm \
        --cases BENCH/synthetic/cases.csv --subjects 10:13
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from NeuroADLib.evaluation import metrics
from NeuroADLib.evaluation.harness import CaseVolumes
from NeuroADLib.methods.base import LoadedMethod, load_method
from NeuroADLib.postprocessing import filtered_in_eroded_brain

LEVELS = (250, 500, 750)
SEEDS = (42, 43, 44, 45)
ENSEMBLES = {"paper: 250/500/750, 1 draw": ((0, 1, 2), 1), "250/500/750, 2 draws": ((0, 1, 2), 2),
             "250/500/750, 4 draws": ((0, 1, 2), 4), "250, 1 draw": ((0,), 1),
             "250, 4 draws": ((0,), 4), "500, 4 draws": ((1,), 4), "750, 4 draws": ((2,), 4),
             "500/750, 4 draws": ((1, 2), 4)}


def one_step_methods(bundle: str) -> list[list[LoadedMethod]]:
    """cDDPM at each single level (rows) and seed (columns), loaded once: each keeps the noise
    it drew for the slice shape, so later cases reuse it."""
    return [[load_method("cddpm", bundle, {"t_min": level, "t_max": level, "levels": 1,
                                           "seed": seed}) for seed in SEEDS] for level in LEVELS]


def reconstructions(methods: list[list[LoadedMethod]], image: np.ndarray, brain: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The harmonised scan and its one-step reconstructions, (levels, seeds, *grid)."""
    harmonised, _, _ = methods[0][0].harmonise(image, brain)  # one intensity standard for all
    recs = np.stack([[method.model.predict(harmonised, brain)[1] for method in row]
                     for row in methods])
    return harmonised, recs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--cases", required=True, help="a benchmark manifest (cases.csv)")
    parser.add_argument("--subjects", default="10:13", help="FIRST:LAST of its subjects")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    volumes = CaseVolumes(args.cases)
    methods = one_step_methods(args.bundle)
    post = methods[0][0].model.settings  # the bundle's median filter and erosion
    first, last = (int(k) for k in args.subjects.split(":"))
    subjects = list(dict.fromkeys(case["subject"] for case in volumes.cases))[first:last]
    draw_spread, error = [], []
    ap = {name: [] for name in ENSEMBLES}
    floor = {name: [] for name in ENSEMBLES}
    for case in (c for c in volumes.cases if c["subject"] in subjects):
        brain, lesion = volumes.read(case, "brain_mask"), volumes.read(case, "lesion_mask")
        x, recs = reconstructions(methods, volumes.read(case, "image"), brain)
        if lesion is None:
            draw_spread.append([np.abs(r[0] - r[1])[brain].mean() for r in recs])
            error.append([np.abs(x - r[0])[brain].mean() for r in recs])
        for name, (levels, draws) in ENSEMBLES.items():
            rec = recs[list(levels), :draws].mean(axis=(0, 1))
            anomaly = filtered_in_eroded_brain(np.abs(x - rec) * brain, brain,
                                               post.median_size, post.erosion)
            if lesion is None:
                floor[name].append(np.quantile(anomaly[brain], 0.99))
            else:
                ap[name].append(metrics.average_precision(anomaly, lesion, brain))
        print(case["case"], flush=True)
    print(f"\nhealthy cases: {len(error)}; lesioned: {len(ap['250, 1 draw'])}")
    print("| level | mean abs(x_rec(a) - x_rec(b)) | mean abs(x - x_rec) |\n|---|---|---|")
    for level, spread, err in zip(LEVELS, np.mean(draw_spread, 0), np.mean(error, 0), strict=True):
        print(f"| {level} | {spread:.3f} | {err:.3f} |")
    print("\n| ensemble | AP | healthy 99th percentile |\n|---|---|---|")
    for name in ENSEMBLES:
        print(f"| {name} | {np.mean(ap[name]):.3f} | {np.mean(floor[name]):.4f} |")


if __name__ == "__main__":
    main()

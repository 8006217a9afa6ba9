"""What a latent method's first stage allows it to reach, before any diffusion model.

For every lesioned case of a synthetic benchmark (its healthy original in the same set), with
the autoencoder of a bundle (x the lesioned scan, h its healthy original, R = D(E(.)) the
autoencoder's reconstruction), the voxel AP inside the brain of:

    autoencoder residual   |x - R(x)|     the first stage alone as a detector
    oracle vs input        |x - R(h)|     a perfect latent model, mapped against the scan
                                          (CADD's and the conditioned LDM's paper maps)
    oracle vs reconstruction |R(x) - R(h)|  the same, mapped against R(x)
                                          (`against_reconstruction`, as MAD-AD)

and the share of the lesion's contrast the reconstruction keeps, mean |R(x) - R(h)| over mean
|x - h| in the lesion. A perfect diffusion model turns E(x) into E(h); the two oracle maps are
then what each map definition can reach with this first stage.

    python benchmarks/first_stage_bounds.py BENCH/synthetic/cases.csv \
        --autoencoder NeuroADLib/models/bundled/cadd-ixi-2mm/autoencoder --subjects 4
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from NeuroADLib.evaluation.cases import read_cases
from NeuroADLib.evaluation.metrics import average_precision
from NeuroADLib.gridpack import read_grid_file
from NeuroADLib.networks.autoencoder import decode_image, encode_image, load_autoencoder

MAPS = ("autoencoder_residual", "oracle_vs_input", "oracle_vs_reconstruction")


def case_bounds(autoencoder, lesioned: np.ndarray, healthy: np.ndarray, lesion: np.ndarray,
                brain: np.ndarray) -> dict[str, float]:
    """The three maps' AP and the kept contrast for one lesioned case."""
    def reconstruction(image):
        return decode_image(autoencoder, encode_image(autoencoder, image))

    r_x, r_h = reconstruction(lesioned), reconstruction(healthy)
    maps = {"autoencoder_residual": np.abs(lesioned - r_x),
            "oracle_vs_input": np.abs(lesioned - r_h),
            "oracle_vs_reconstruction": np.abs(r_x - r_h)}
    figures = {name: average_precision(m, lesion, brain) for name, m in maps.items()}
    figures["contrast_kept"] = float(np.abs(r_x - r_h)[lesion].mean()
                                     / np.abs(lesioned - healthy)[lesion].mean())
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", help="a synthetic benchmark's cases.csv")
    parser.add_argument("--autoencoder", required=True, help="a bundle's autoencoder folder")
    parser.add_argument("--subjects", type=int, default=4, help="first N subjects")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the per-case figures and means here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    autoencoder, _ = load_autoencoder(args.autoencoder)
    root = Path(args.cases).parent
    rows = read_cases(args.cases)
    subjects = list(dict.fromkeys(row["subject"] for row in rows))[:args.subjects]
    per_case = {}
    for subject in subjects:
        mine = [row for row in rows if row["subject"] == subject]
        original = next(row for row in mine if row["kind"] == "healthy")
        healthy = read_grid_file(root / original["image"])
        brain = read_grid_file(root / original["brain_mask"]) > 0
        for row in mine:
            if row["kind"] == "healthy":
                continue
            lesion = (read_grid_file(root / row["lesion_mask"]) > 0) & brain
            per_case[row["case"]] = case_bounds(autoencoder, read_grid_file(
                root / row["image"]), healthy, lesion, brain)
            print(row["case"], {k: round(v, 3) for k, v in per_case[row["case"]].items()},
                  flush=True)
    means = {key: float(np.mean([c[key] for c in per_case.values()]))
             for key in (*MAPS, "contrast_kept")}
    print("mean over", len(per_case), "cases:", {k: round(v, 3) for k, v in means.items()})
    if args.json:
        Path(args.json).write_text(json.dumps({"cases": per_case, "mean": means}, indent=2))


if __name__ == "__main__":
    main()

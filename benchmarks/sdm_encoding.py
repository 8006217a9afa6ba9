"""SDM's two ways to reach its noise level, at one or more levels, on lesioned sequences of the
longitudinal set (README "Longitudinal"): DDIM inversion (x_t^infer, the bundle's default)
against the forward process's noise (x_t^semantic); prints the AP of D_p and of the FAM
score per visit and their means.

    python benchmarks/sdm_encoding.py --sdm models/sdm --visits visits.csv \
        --sequences IXI015-HH-1258_lesioned,IXI079-HH-1388_lesioned --levels 250,500
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import SimpleITK as sitk

from NeuroADLib.evaluation import metrics
from NeuroADLib.evaluation.longitudinal import read_sequences
from NeuroADLib.methods import load_method
from NeuroADLib.methods.sdm import ENCODINGS


def read(path: str) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sdm", required=True, help="SDM bundle folder")
    parser.add_argument("--visits", required=True, help="visits.csv of the longitudinal set")
    parser.add_argument("--sequences", required=True, help="comma-separated sequence names")
    parser.add_argument("--levels", default="250", help="comma-separated noise levels")
    args = parser.parse_args()
    method = load_method("sdm_fam", args.sdm)
    sequences = read_sequences(args.visits)
    visits = [v for name in args.sequences.split(",") for v in sequences[name]]
    for encoding in ENCODINGS:
        for level in (int(v) for v in args.levels.split(",")):
            model = replace(method.model, settings=replace(
                method.model.settings, encoding=encoding, noise_level=level))
            pixel, fam = [], []
            for visit in visits:
                brain = read(visit["brain_mask"]) > 0
                lesion = (read(visit["lesion_mask"]) > 0) & brain
                scores = model.scores(method.harmonise(read(visit["image"]), brain)[0], brain)
                pixel.append(metrics.average_precision(model.postprocess(scores.pixel, brain),
                                                       lesion, brain))
                fam.append(metrics.average_precision(model.postprocess(scores.fam, brain),
                                                     lesion, brain))
            print(f"{encoding} {level}: D_p AP {np.round(pixel, 3).tolist()} mean "
                  f"{np.mean(pixel):.3f} | FAM AP {np.round(fam, 3).tolist()} mean "
                  f"{np.mean(fam):.3f}", flush=True)


if __name__ == "__main__":
    main()

"""Scan noise and residual maps: why reconstruction methods light up on real scans from other
scanners.

1. The high-frequency level of every scan: the standard deviation of x - G_1(x) (a Gaussian of
   one voxel) inside the brain eroded by three voxels, on the 2 mm grid (the scans as the
   benchmarks hold them; intensities on the pipeline's [0, 1] scale).
2. For a reconstruction method (its pseudo-healthy image x_rec): the map median_5(|r|) on the
   eroded brain, with r = x - x_rec (the methods' residual) or r = G_sigma(x - x_rec) (the
   signed residual smoothed before its magnitude, which does not rectify noise), at each
   sigma: AP on the first lesioned synthetic cases, the threshold at 1% of the first healthy
   synthetic cases' brain voxels, and, at it, the flagged share of the real cases' tissue
   outside their lesions.

    python benchmarks/scan_noise.py --method cddpm --model models/cddpm \
        --bench ~/neuroad-cache/benchmarks --healthy 8 --lesioned 12 --sigma 0 --sigma 1 \
        --sigma 1.5 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score

from NeuroADLib.evaluation.harness import CaseVolumes
from NeuroADLib.methods import load_method
from NeuroADLib.postprocessing import erode_brain_mask, median_filter


def high_frequency_level(image: np.ndarray, brain: np.ndarray) -> float:
    inner = erode_brain_mask(brain, 3)
    return float((image - ndimage.gaussian_filter(image, 1.0))[inner].std())


def residual_maps(method, image: np.ndarray, brain: np.ndarray, sigmas: list[float]
                  ) -> dict[float, np.ndarray]:
    """The method's residual as a map, per smoothing sigma (0: none)."""
    harmonised, gain = method.standard.harmonise(image, brain)
    healthy = method.run(image, brain).healthy * gain
    signed = (harmonised - healthy) * brain
    scored = erode_brain_mask(brain, 3)
    return {sigma: median_filter(np.abs(ndimage.gaussian_filter(signed, sigma) if sigma
                                        else signed) * brain, 5) * scored
            for sigma in sigmas}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", required=True)
    parser.add_argument("--model", required=True, help="the method's bundle folder")
    parser.add_argument("--bench", required=True, help="`neuroad make-benchmarks` output")
    parser.add_argument("--healthy", type=int, default=8)
    parser.add_argument("--lesioned", type=int, default=12)
    parser.add_argument("--sigma", type=float, action="append", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    method = load_method(args.method, args.model)
    bench = Path(args.bench)
    synthetic = CaseVolumes(bench / "synthetic/cases.csv")
    real = CaseVolumes(bench / "real/cases.csv")
    healthy = [c for c in synthetic.cases if c["kind"] == "healthy"][:args.healthy]
    lesioned = [c for c in synthetic.cases if c["kind"] == "synthetic"][:args.lesioned]
    real_t1 = [c for c in real.cases if c["contrast"] == "t1"]

    levels = {c["case"]: high_frequency_level(cases.read(c, "image"), cases.read(c, "brain_mask"))
              for cases, group in ((synthetic, healthy), (real, real_t1)) for c in group}
    for case, level in levels.items():
        print(f"high-frequency level {case}: {level:.4f}", flush=True)

    values = {s: [] for s in args.sigma}
    for case in healthy:
        brain = synthetic.read(case, "brain_mask")
        for sigma, anomaly in residual_maps(method, synthetic.read(case, "image"), brain,
                                            args.sigma).items():
            values[sigma].append(anomaly[brain])
    thresholds = {s: float(np.quantile(np.concatenate(v), 0.99)) for s, v in values.items()}
    results = {"high_frequency_level": levels, "thresholds": thresholds,
               "synthetic_ap": {s: [] for s in args.sigma}, "real": {}}
    for case in lesioned:
        brain, lesion = synthetic.read(case, "brain_mask"), synthetic.read(case, "lesion_mask")
        for sigma, anomaly in residual_maps(method, synthetic.read(case, "image"), brain,
                                            args.sigma).items():
            results["synthetic_ap"][sigma].append(
                float(average_precision_score(lesion[brain], anomaly[brain])))
    for sigma, aps in results["synthetic_ap"].items():
        print(f"sigma {sigma}: synthetic AP {np.mean(aps):.3f} ({len(aps)} cases)", flush=True)
    for case in real_t1:
        brain, lesion = real.read(case, "brain_mask"), real.read(case, "lesion_mask")
        tissue = brain & ~lesion
        for sigma, anomaly in residual_maps(method, real.read(case, "image"), brain,
                                            args.sigma).items():
            flagged = float((anomaly[tissue] > thresholds[sigma]).mean())
            ap = float(average_precision_score(lesion[brain], anomaly[brain]))
            results["real"].setdefault(case["case"], {})[sigma] = {"ap": ap,
                                                                  "flagged_outside": flagged}
            print(f"sigma {sigma}: {case['case']} AP {ap:.3f}, flagged outside the lesion "
                  f"{flagged:.1%}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

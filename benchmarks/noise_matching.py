"""Noise matching on and off, per method: the noise level of every benchmark scan against the
healthy ceiling, and on the real T1 lesion cases (the scans noisier than the cohort) AP and the
share of the tissue outside the lesion above the method's calibrated threshold.

    python benchmarks/noise_matching.py --method cddpm --model models/cddpm \
        --bench ~/neuroad-cache/benchmarks [--json out.json]

The bundle needs the healthy noise range (`neuroad train ranges` adds it to an older bundle).
Synthetic and clinical-acquisition cases below the ceiling are not changed by the matching, so
their figures are the method's usual ones; this prints how many lie above it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import average_precision_score

from NeuroADLib.evaluation.harness import CaseVolumes
from NeuroADLib.methods import load_method
from NeuroADLib.preprocessing.harmonisation import noise_level


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", required=True)
    parser.add_argument("--model", required=True, help="the method's bundle folder")
    parser.add_argument("--bench", required=True, help="`neuroad make-benchmarks` output")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_method(args.method, args.model)
    standard = loaded.standard.with_config(match_noise=True)
    if standard.noise_ceiling is None:
        raise SystemExit(f"{args.model} has no healthy noise range: run `neuroad train ranges "
                         f"--cohort COHORT --out {args.model}` first")
    variants = {matched: dataclasses.replace(loaded, standard=standard.with_config(
        match_noise=matched)) for matched in (False, True)}
    bench = Path(args.bench)
    results = {"ceiling": standard.noise_ceiling, "above_ceiling": {}, "real": {}}
    print(f"healthy noise ceiling {standard.noise_ceiling:.4f}")
    for name in ("synthetic", "clinical"):
        cases = CaseVolumes(bench / name / "cases.csv")
        levels = []
        for case in cases.cases:
            image, brain = cases.read(case, "image"), cases.read(case, "brain_mask")
            harmonised, _ = variants[False].standard.harmonise(image, brain)  # not matched
            levels.append(noise_level(harmonised, brain))
        above = int(np.sum(np.array(levels) > standard.noise_ceiling))
        results["above_ceiling"][name] = {"cases": len(levels), "above": above,
                                          "max": float(np.max(levels))}
        print(f"{name}: {above} of {len(levels)} scans above the ceiling "
              f"(highest {np.max(levels):.4f})", flush=True)
    real = CaseVolumes(bench / "real/cases.csv")
    threshold = loaded.calibration.output_threshold
    for case in [c for c in real.cases if c["contrast"] == "t1"]:
        image, brain = real.read(case, "image"), real.read(case, "brain_mask")
        lesion = real.read(case, "lesion_mask")
        tissue = brain & ~lesion
        for matched, method in variants.items():
            prediction = method.run(image, brain)
            anomaly = prediction.anomaly
            row = {"noise_level": prediction.harmonisation["statistics"]["noise_level"],
                   "ap": float(average_precision_score(lesion[brain], anomaly[brain])),
                   "flagged_outside": float((anomaly[tissue] > threshold).mean())}
            results["real"].setdefault(case["case"], {})["matched" if matched else "as is"] = row
            print(f"{case['case']} (noise {row['noise_level']:.4f}) "
                  f"{'matched' if matched else 'as is'}: AP {row['ap']:.3f}, flagged outside "
                  f"the lesion {row['flagged_outside']:.1%}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""Noise and sharpness matching on and off, per method: the noise level and sharpness of every
benchmark scan against the healthy ceilings, and, as is, with noise matching and with both:
on the real T1 lesion cases (the scans noisier and sharper than the cohort) AP and the share
of the tissue outside the lesion above the method's calibrated threshold; on healthy
validation scans made as sharp as the real cases (`synthesis.acquisition.sharpen`, the amount
found by bisection) the flagged share of the brain (the healthy false-positive rate of a
sharper scanner), and AP on their lesioned copies made as sharp.

    python benchmarks/acquisition_matching.py --method cddpm --model models/cddpm \
        --bench ~/neuroad-cache/benchmarks [--sharpened-subjects 8] [--sets real,sharpened] \
        [--json out.json]

The bundle needs both healthy ranges (`neuroad train ranges` adds them to an older bundle).
Synthetic and clinical-acquisition cases below both ceilings are not changed by the matching,
so their figures are the method's usual ones; this prints how many lie above them.
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
from NeuroADLib.preprocessing.harmonisation import noise_level, sharpness
from NeuroADLib.synthesis.acquisition import sharpen

VARIANTS = {"as is": (False, False), "noise": (True, False), "noise + sharpness": (True, True)}
BISECTIONS = 20
# Unsharp masking at this scale (voxels) raises the anatomy's edges as the real cases have them
# (sharpness 0.11) with their noise (0.08, the level ms_patient19 has); at 1 voxel it would
# raise the noise three times as much.
SHARPEN_SIGMA = 3.0


def sharpened_to(image: np.ndarray, brain: np.ndarray, target: float) -> np.ndarray:
    """The scan unsharp-masked by the amount (bisection in [0, 20]) that brings its sharpness
    to `target`."""
    low, high = 0.0, 20.0
    for _ in range(BISECTIONS):
        middle = (low + high) / 2
        sharper = sharpness(sharpen(image, brain, middle, SHARPEN_SIGMA), brain) < target
        low, high = (middle, high) if sharper else (low, middle)
    return sharpen(image, brain, high, SHARPEN_SIGMA)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", required=True)
    parser.add_argument("--model", required=True, help="the method's bundle folder")
    parser.add_argument("--bench", required=True, help="`neuroad make-benchmarks` output")
    parser.add_argument("--sets", default="real,sharpened",
                        help="which of real, sharpened to run (comma-separated)")
    parser.add_argument("--sharpened-subjects", type=int, default=8,
                        help="healthy validation subjects made as sharp as the real cases")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_method(args.method, args.model)
    standard = loaded.standard.with_config(match_noise=True, match_sharpness=True)
    ceilings = {"noise_level": standard.noise_ceiling, "sharpness": standard.sharpness_ceiling}
    if None in ceilings.values():
        raise SystemExit(f"{args.model} lacks a healthy noise or sharpness range: run `neuroad "
                         f"train ranges --cohort COHORT --out {args.model}` first")
    variants = {name: dataclasses.replace(loaded, standard=standard.with_config(
        match_noise=noise, match_sharpness=sharp)) for name, (noise, sharp) in VARIANTS.items()}
    bench = Path(args.bench)
    results = {"ceilings": ceilings, "above_ceiling": {}, "real": {}}
    print(f"healthy ceilings: noise {ceilings['noise_level']:.4f}, sharpness "
          f"{ceilings['sharpness']:.4f}")
    for name in ("synthetic", "clinical"):
        cases = CaseVolumes(bench / name / "cases.csv")
        levels = {"noise_level": [], "sharpness": []}
        for case in cases.cases:
            image, brain = cases.read(case, "image"), cases.read(case, "brain_mask")
            harmonised, _ = variants["as is"].standard.harmonise(image, brain)
            levels["noise_level"].append(noise_level(harmonised, brain))
            levels["sharpness"].append(sharpness(image, brain))
        results["above_ceiling"][name] = {
            statistic: {"cases": len(values), "above": int(np.sum(np.array(values)
                                                                  > ceilings[statistic])),
                        "max": float(np.max(values))} for statistic, values in levels.items()}
        for statistic, counted in results["above_ceiling"][name].items():
            print(f"{name}: {counted['above']} of {counted['cases']} scans above the "
                  f"{statistic} ceiling (highest {counted['max']:.4f})", flush=True)
    threshold = loaded.calibration.output_threshold
    sets = args.sets.split(",")
    if "real" in sets:
        results["real"] = real_cases(bench, variants, threshold)
    if "sharpened" in sets:
        real = CaseVolumes(bench / "real/cases.csv")
        target = float(np.mean([sharpness(real.read(c, "image"), real.read(c, "brain_mask"))
                                for c in real.cases if c["contrast"] == "t1"]))
        results["sharpened"] = sharpened_cases(bench, variants, threshold, target,
                                               args.sharpened_subjects)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def real_cases(bench: Path, variants: dict, threshold: float) -> dict:
    """Per real T1 case and variant: its statistics, AP and flagged share outside the lesion."""
    real = CaseVolumes(bench / "real/cases.csv")
    results = {}
    for case in [c for c in real.cases if c["contrast"] == "t1"]:
        image, brain = real.read(case, "image"), real.read(case, "brain_mask")
        lesion = real.read(case, "lesion_mask")
        tissue = brain & ~lesion
        for name, method in variants.items():
            prediction = method.run(image, brain)
            anomaly, statistics = prediction.anomaly, prediction.harmonisation["statistics"]
            row = {"noise_level": statistics["noise_level"],
                   "sharpness": statistics["sharpness"],
                   "ap": float(average_precision_score(lesion[brain], anomaly[brain])),
                   "flagged_outside": float((anomaly[tissue] > threshold).mean())}
            results.setdefault(case["case"], {})[name] = row
            print(f"{case['case']} (noise {row['noise_level']:.4f}, sharpness "
                  f"{row['sharpness']:.4f}) {name}: AP {row['ap']:.3f}, flagged outside the "
                  f"lesion {row['flagged_outside']:.1%}", flush=True)
    return results


def sharpened_cases(bench: Path, variants: dict, threshold: float, target: float,
                    subjects: int) -> dict:
    """The first `subjects` healthy validation subjects of the synthetic set and their lesioned
    copies, sharpened to `target`: per variant, the mean flagged share of the healthy brains
    and the mean AP over the lesioned copies."""
    synthetic = CaseVolumes(bench / "synthetic/cases.csv")
    chosen = list(dict.fromkeys(c["subject"] for c in synthetic.cases))[:subjects]
    flagged = {name: [] for name in variants}
    precision = {name: [] for name in variants}
    for case in [c for c in synthetic.cases if c["subject"] in chosen]:
        brain = synthetic.read(case, "brain_mask")
        image = sharpened_to(synthetic.read(case, "image"), brain, target)
        lesion = synthetic.read(case, "lesion_mask") if case["kind"] != "healthy" else None
        for name, method in variants.items():
            anomaly = method.run(image, brain).anomaly
            if lesion is None:
                flagged[name].append(float((anomaly[brain] > threshold).mean()))
            elif lesion.any():
                precision[name].append(float(average_precision_score(lesion[brain],
                                                                     anomaly[brain])))
    results = {"target_sharpness": target, "subjects": chosen,
               **{name: {"healthy_flagged": float(np.mean(flagged[name])),
                         "lesioned_ap": float(np.mean(precision[name])),
                         "healthy_cases": len(flagged[name]),
                         "lesioned_cases": len(precision[name])} for name in variants}}
    for name in variants:
        print(f"sharpened to {target:.4f} ({len(chosen)} subjects) {name}: healthy flagged "
              f"{results[name]['healthy_flagged']:.1%}, lesioned AP "
              f"{results[name]['lesioned_ap']:.3f}", flush=True)
    return results


if __name__ == "__main__":
    main()

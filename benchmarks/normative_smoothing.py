"""How much the healthy statistics of normative maps should be smoothed (variance smoothing,
`ReferenceStatistics.from_healthy_maps(smoothing_sigma=...)`), chosen on some subjects of the
synthetic benchmark and confirmed on the others.

From the raw maps `neuroad evaluate` saved (benchmarks/method_figures.sh). Each lesioned copy's
normative map is taken against the statistics of the OTHER healthy validation subjects (as
normative_maps.py); the threshold of each sigma is the 1% healthy false-positive threshold of
leave-one-out healthy normative maps. The first `--tuning-subjects` subjects choose the sigma
(highest mean AP); the remaining subjects are the held-out check.

    python benchmarks/normative_smoothing.py --method cddpm=results/cddpm/synthetic \
        --synthetic BENCH/synthetic/cases.csv --sigmas 0,1,2,3,4 --tuning-subjects 10
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from normative_maps import lesion_figures, load_maps

from NeuroADLib.evaluation.harness import CaseVolumes
from NeuroADLib.methods.base import HEALTHY_FPR, INDEX_TOP_FRACTION
from NeuroADLib.postprocessing import (
    ReferenceStatistics,
    healthy_calibrated_threshold,
    normative_map,
    normative_threshold,
)

FIGURES = ("ap", "auroc", "max_dice", "dice")


def sweep(method: str, results: Path, volumes: CaseVolumes, sigmas: list[float],
          tuning_subjects: int) -> dict:
    """{map: {"tuning"|"held_out": {figure: mean}}} for the raw map and each sigma."""
    cases = [c for c in volumes.cases if c["contrast"] == "t1"]
    maps = load_maps(results, method, cases)
    healthy = [c for c in cases if c["kind"] == "healthy" and c["case"] in maps]
    lesioned = [c for c in cases if c["kind"] == "synthetic" and c["case"] in maps]
    tuning = {c["subject"] for c in healthy[:tuning_subjects]}
    brains = [volumes.read(c, "brain_mask") for c in healthy]
    healthy_maps = [maps[c["case"]] for c in healthy]
    lesions = {c["case"]: volumes.read(c, "lesion_mask") for c in lesioned}
    raw_threshold = healthy_calibrated_threshold(healthy_maps, brains, HEALTHY_FPR)
    rows: dict[str, dict[str, list[dict]]] = {}

    def add(name: str, copy: dict, anomaly: np.ndarray, brain: np.ndarray, threshold: float):
        group = "tuning" if copy["subject"] in tuning else "held_out"
        rows.setdefault(name, {"tuning": [], "held_out": []})[group].append(
            lesion_figures(anomaly, brain, lesions[copy["case"]], threshold))

    for sigma in sigmas:
        threshold, _ = normative_threshold(healthy_maps, brains, HEALTHY_FPR,
                                           INDEX_TOP_FRACTION, sigma)
        for k, case in enumerate(healthy):
            others = [j for j in range(len(healthy)) if j != k]
            reference = ReferenceStatistics.from_healthy_maps(
                [healthy_maps[j] for j in others], [brains[j] for j in others],
                INDEX_TOP_FRACTION, sigma)
            for copy in (c for c in lesioned if c["subject"] == case["subject"]):
                if sigma == sigmas[0]:
                    add("raw", copy, maps[copy["case"]], brains[k], raw_threshold)
                add(f"normative, sigma {sigma:g}", copy,
                    normative_map(maps[copy["case"]], reference, brains[k]), brains[k],
                    threshold)
    return {name: {group: {key: float(np.mean([r[key] for r in figures]))
                           for key in FIGURES} | {"cases": len(figures)}
                   for group, figures in groups.items() if figures}
            for name, groups in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True, help="NAME=RESULTS: a method and its "
                        "`neuroad evaluate` folder of the synthetic benchmark")
    parser.add_argument("--synthetic", required=True, help="synthetic cases.csv")
    parser.add_argument("--sigmas", default="0,1,2,3,4", help="comma-separated, in voxels")
    parser.add_argument("--tuning-subjects", type=int, default=10)
    args = parser.parse_args()
    name, results = args.method.split("=", 1)
    sigmas = [float(s) for s in args.sigmas.split(",")]
    figures = sweep(name, Path(results), CaseVolumes(args.synthetic), sigmas,
                    args.tuning_subjects)
    print(f"| {name} map | tuning AP | AUROC | max Dice | Dice | held-out AP | AUROC | "
          "max Dice | Dice |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kind, groups in figures.items():
        cells = [f"{groups[g][key]:.3f}" if g in groups else "" for g in ("tuning", "held_out")
                 for key in FIGURES]
        print(f"| {kind} | " + " | ".join(cells) + " |")
    smoothed = [k for k in figures if k != "raw"]
    best = max(smoothed, key=lambda k: figures[k]["tuning"]["ap"])
    counts = {g: figures["raw"][g]["cases"] for g in figures["raw"]}
    print(f"\nchosen on the tuning subjects' {counts.get('tuning', 0)} lesioned cases: {best}; "
          f"held out: {counts.get('held_out', 0)} cases")


if __name__ == "__main__":
    main()

"""Which lesions a method misses, and what its post-processing costs it (issues 13 and 15).

Reads a method's unfiltered maps of the synthetic benchmark (`neuroad evaluate ... --map raw
--option M.median_size=1 --option M.erosion=0`) and scores them under several post-processings
(median filter side, Gaussian sigma, brain-mask erosions), each with its own 1% healthy
threshold fitted on the set's healthy maps. Lesions are split by size and by polarity (mean
signed intensity change against the subject's healthy scan), because a 5^3 median filter on a
2 mm grid removes a lesion under about 10 mm across whatever the network did. With
`--normative` each post-processed map is also scored as a normative map (each subject's maps
against the other subjects' healthy statistics, variance-smoothed as calibrations are or at
each `--smoothing-sigma` given, the threshold from leave-one-out healthy normative maps); with
`--tuning-subjects N` the AP is also given over the first N subjects' lesioned copies (where a
choice is made) and over the others (where it is checked).

    python benchmarks/postprocessing_sweep.py --cases BENCH/synthetic/cases_10_subjects.csv \
        --results results/cddpm_unfiltered/synthetic --method cddpm \
        --variant median=5,erosion=3 --variant median=3,erosion=3 --variant sigma=1,erosion=1 \
        [--reference zscore=results/zscore/synthetic] [--small 300] [--json sweep.json] \
        [--normative [--smoothing-sigma 0 --smoothing-sigma 2 ...]] [--tuning-subjects 10]

`--reference` adds another method's saved maps, as they are, split the same way. Last, per
group, the share of each lesion the pseudo-healthy image undoes, from the unfiltered residuals
as `lesion_removal.py` defines it (1: undone, 0: reproduced).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from normative_maps import PostProcessing, load_maps

from NeuroADLib.evaluation import metrics
from NeuroADLib.evaluation.harness import CaseVolumes
from NeuroADLib.methods.base import HEALTHY_FPR, INDEX_TOP_FRACTION, REFERENCE_SMOOTHING_SIGMA
from NeuroADLib.postprocessing import (
    ReferenceStatistics,
    healthy_calibrated_threshold,
    normative_map,
)


@dataclass
class Benchmark:
    """The set's cases and their grid volumes, read once: every healthy and lesioned case's
    image and brain mask, every lesioned case's lesion mask, the healthy case of each subject."""

    lesioned: list[dict]
    healthy: dict[str, dict]  # subject -> its healthy case
    images: dict[str, np.ndarray]
    brains: dict[str, np.ndarray]
    lesions: dict[str, np.ndarray]

    @classmethod
    def read(cls, manifest: str) -> Benchmark:
        volumes = CaseVolumes(manifest)
        cases = [c for c in volumes.cases if c["kind"] in ("healthy", "synthetic")]
        return cls([c for c in cases if c["kind"] == "synthetic"],
                   {c["subject"]: c for c in cases if c["kind"] == "healthy"},
                   {c["case"]: volumes.read(c, "image") for c in cases},
                   {c["case"]: volumes.read(c, "brain_mask") for c in cases},
                   {c["case"]: volumes.read(c, "lesion_mask") for c in cases
                    if c["kind"] == "synthetic"})

    def cases(self) -> list[dict]:
        return [*self.healthy.values(), *self.lesioned]

    def change(self, case: dict) -> np.ndarray:
        """x_lesioned - x_healthy inside the lesion."""
        original = self.healthy[case["subject"]]["case"]
        lesion = self.lesions[case["case"]]
        return self.images[case["case"]][lesion] - self.images[original][lesion]


def lesion_groups(bench: Benchmark, small: int) -> dict[str, str]:
    """Each lesioned case's group: small/large (lesion voxels below `small`) and hypo/hyper
    (mean signed change against the same subject's healthy scan)."""
    return {case["case"]: f"{'small' if bench.lesions[case['case']].sum() < small else 'large'}, "
                          f"{'hyper' if bench.change(case).mean() > 0 else 'hypo'}"
            for case in bench.lesioned}


def normative_maps_leave_one_out(maps: dict[str, np.ndarray], bench: Benchmark,
                                 smoothing_sigma: float) -> dict[str, np.ndarray]:
    """Every case's map as a normative map against the healthy maps of the OTHER subjects."""
    out = {}
    for subject, healthy in bench.healthy.items():
        others = [c["case"] for s, c in bench.healthy.items() if s != subject]
        reference = ReferenceStatistics.from_healthy_maps(
            [maps[c] for c in others], [bench.brains[c] for c in others], INDEX_TOP_FRACTION,
            smoothing_sigma)
        for case in [healthy, *(c for c in bench.lesioned if c["subject"] == subject)]:
            out[case["case"]] = normative_map(maps[case["case"]], reference,
                                              bench.brains[case["case"]])
    return out


def score(maps: dict[str, np.ndarray], bench: Benchmark, groups: dict[str, str],
          tuning_subjects: int = 0) -> dict:
    """Mean AP / AUROC / max Dice over the lesioned cases (all and per group), and the share of
    lesion voxels above the 1% healthy threshold; with `tuning_subjects`, the AP over the
    first subjects' cases and over the others'."""
    healthy = [c["case"] for c in bench.healthy.values() if c["case"] in maps]
    threshold = healthy_calibrated_threshold([maps[c] for c in healthy],
                                             [bench.brains[c] for c in healthy], HEALTHY_FPR)
    rows = []
    for case in (c["case"] for c in bench.lesioned if c["case"] in maps):
        anomaly, brain, lesion = maps[case], bench.brains[case], bench.lesions[case]
        rows.append({"group": groups[case], "case": case,
                     "ap": metrics.average_precision(anomaly, lesion, brain),
                     "auroc": metrics.voxel_auroc(anomaly, lesion, brain),
                     "max_dice": metrics.max_dice(anomaly, lesion, brain)[0],
                     "lesion_recall": float((anomaly[lesion & brain] > threshold).mean())})
    figures = {"threshold": threshold, "cases": len(rows)}
    for key in ("ap", "auroc", "max_dice", "lesion_recall"):
        figures[key] = float(np.mean([r[key] for r in rows]))
    if tuning_subjects:
        tuning = set(list(bench.healthy)[:tuning_subjects])
        first = {c["case"] for c in bench.lesioned if c["subject"] in tuning}
        figures["ap (tuning subjects)"] = float(np.mean([r["ap"] for r in rows
                                                         if r["case"] in first]))
        figures["ap (held-out subjects)"] = float(np.mean([r["ap"] for r in rows
                                                           if r["case"] not in first]))
    for group in sorted({r["group"] for r in rows}):
        chosen = [r["ap"] for r in rows if r["group"] == group]
        figures[f"ap ({group}, n={len(chosen)})"] = float(np.mean(chosen))
    return figures


def removal_by_group(raw: dict[str, np.ndarray], bench: Benchmark,
                     groups: dict[str, str]) -> dict[str, float]:
    """Mean over each group of (mean residual in the lesion - the same on the subject's healthy
    scan) / mean |x_lesioned - x_healthy| in the lesion."""
    shares: dict[str, list[float]] = {}
    for case in (c for c in bench.lesioned if c["case"] in raw):
        lesion = bench.lesions[case["case"]]
        original = bench.healthy[case["subject"]]["case"]
        excess = raw[case["case"]][lesion].mean() - raw[original][lesion].mean()
        shares.setdefault(groups[case["case"]], []).append(
            float(excess / np.abs(bench.change(case)).mean()))
    return {group: float(np.mean(values)) for group, values in sorted(shares.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", required=True, help="the synthetic benchmark's cases.csv")
    parser.add_argument("--results", type=Path, required=True,
                        help="`neuroad evaluate --out` folder of the unfiltered maps")
    parser.add_argument("--method", required=True)
    parser.add_argument("--variant", action="append", type=PostProcessing.parse, required=True)
    parser.add_argument("--reference", action="append", default=[],
                        help="NAME=RESULTS: another method's saved maps, scored as they are")
    parser.add_argument("--small", type=int, default=300,
                        help="lesions with fewer voxels count as small (300: 2.4 mL at 2 mm)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--normative", action="store_true",
                        help="also score each post-processing's normative maps")
    parser.add_argument("--smoothing-sigma", action="append", type=float,
                        help="voxels the normative maps' healthy statistics pool (repeat to "
                             f"compare; default: the calibration's {REFERENCE_SMOOTHING_SIGMA})")
    parser.add_argument("--tuning-subjects", type=int, default=0)
    args = parser.parse_args()

    bench = Benchmark.read(args.cases)
    groups = lesion_groups(bench, args.small)
    raw = load_maps(args.results, args.method, bench.cases())
    table = {}
    for variant in args.variant:
        maps = {case: variant.apply(m, bench.brains[case]) for case, m in raw.items()}
        table[f"{args.method} ({variant.name()})"] = score(maps, bench, groups,
                                                           args.tuning_subjects)
        for sigma in (args.smoothing_sigma or [REFERENCE_SMOOTHING_SIGMA]) * args.normative:
            label = f", sigma {sigma:g}" if args.smoothing_sigma else ""
            table[f"{args.method} normative ({variant.name()}{label})"] = score(
                normative_maps_leave_one_out(maps, bench, sigma), bench, groups,
                args.tuning_subjects)
    for reference in args.reference:
        name, folder = reference.split("=", 1)
        table[f"{name} (as saved)"] = score(load_maps(Path(folder), name, bench.cases()),
                                            bench, groups, args.tuning_subjects)
    columns = list(next(iter(table.values())))
    print("| map | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name, figures in table.items():
        print(f"| {name} | " + " | ".join(f"{figures[c]:.3f}" if isinstance(figures[c], float)
                                         else str(figures[c]) for c in columns) + " |")
    removal = removal_by_group(raw, bench, groups)
    print("\n| lesion undone (unfiltered) | " + " | ".join(removal) + " |")
    print("|---" * (len(removal) + 1) + "|")
    print(f"| {args.method} | " + " | ".join(f"{v:.2f}" for v in removal.values()) + " |")
    if args.json:
        args.json.write_text(json.dumps({"maps": table, "lesion_undone": removal}, indent=1))


if __name__ == "__main__":
    main()

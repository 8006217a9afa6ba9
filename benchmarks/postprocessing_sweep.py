"""Which lesions a method misses, and what its post-processing costs it (issues 13 and 15).

Reads a method's unfiltered maps of the synthetic benchmark (`neuroad evaluate ... --map raw
--option M.median_size=1 --option M.erosion=0`) and scores them under several post-processings
(median filter side, Gaussian sigma, brain-mask erosions), each with its own 1% healthy
threshold fitted on the set's healthy maps. Lesions are split by size and by polarity (mean
signed intensity change against the subject's healthy scan), because a 5^3 median filter on a
2 mm grid removes a lesion under about 10 mm across whatever the network did.

    python benchmarks/postprocessing_sweep.py --cases BENCH/synthetic/cases_10_subjects.csv \
        --results results/cddpm_unfiltered/synthetic --method cddpm \
        --variant median=5,erosion=3 --variant median=3,erosion=3 --variant sigma=1,erosion=1 \
        [--reference zscore=results/zscore/synthetic] [--small 300] [--json sweep.json]

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

from NeuroADLib.evaluation import metrics
from NeuroADLib.evaluation.harness import CaseVolumes
from NeuroADLib.methods.base import HEALTHY_FPR
from NeuroADLib.postprocessing import healthy_calibrated_threshold
from NeuroADLib.postprocessing.filters import erode_brain_mask, gaussian_smooth, median_filter


@dataclass(frozen=True)
class PostProcessing:
    """A median filter of side `median` (1: none) or a Gaussian of `sigma` voxels (0: none),
    then zero outside the brain mask eroded `erosion` times."""

    median: int = 1
    sigma: float = 0.0
    erosion: int = 0

    @classmethod
    def parse(cls, text: str) -> PostProcessing:
        fields = dict(item.split("=", 1) for item in text.split(",") if item)
        return cls(median=int(fields.get("median", 1)), sigma=float(fields.get("sigma", 0)),
                   erosion=int(fields.get("erosion", 0)))

    def name(self) -> str:
        smoothing = (f"median {self.median}" if self.median > 1 else
                     f"gaussian {self.sigma:g}" if self.sigma > 0 else "none")
        return f"{smoothing}, erosion {self.erosion}"

    def apply(self, volume: np.ndarray, brain: np.ndarray) -> np.ndarray:
        if self.median > 1:
            volume = median_filter(volume, self.median)
        if self.sigma > 0:
            volume = gaussian_smooth(volume, self.sigma)
        return (volume * erode_brain_mask(brain, self.erosion)).astype(np.float32)


def lesion_groups(volumes: CaseVolumes, small: int) -> dict[str, str]:
    """Each lesioned case's group: small/large (lesion voxels below `small`) and hypo/hyper
    (mean signed change against the same subject's healthy scan)."""
    healthy = {c["subject"]: volumes.read(c, "image") for c in volumes.cases
               if c["kind"] == "healthy"}
    groups = {}
    for case in (c for c in volumes.cases if c["kind"] == "synthetic"):
        lesion = volumes.read(case, "lesion_mask")
        change = float((volumes.read(case, "image") - healthy[case["subject"]])[lesion].mean())
        size = "small" if lesion.sum() < small else "large"
        groups[case["case"]] = f"{size}, {'hyper' if change > 0 else 'hypo'}"
    return groups


def score(maps: dict[str, np.ndarray], volumes: CaseVolumes, groups: dict[str, str]) -> dict:
    """Mean AP / AUROC / max Dice over the lesioned cases (all and per group), and the share of
    healthy brain and of lesion voxels above the 1% healthy threshold."""
    brains = {c["subject"]: volumes.read(c, "brain_mask") for c in volumes.cases
              if c["kind"] == "healthy"}
    healthy = [(maps[c["case"]], brains[c["subject"]]) for c in volumes.cases
               if c["kind"] == "healthy" and c["case"] in maps]
    threshold = healthy_calibrated_threshold([m for m, _ in healthy], [b for _, b in healthy],
                                             HEALTHY_FPR)
    rows = []
    for case in (c for c in volumes.cases if c["kind"] == "synthetic" and c["case"] in maps):
        anomaly, brain = maps[case["case"]], brains[case["subject"]]
        lesion = volumes.read(case, "lesion_mask")
        rows.append({"group": groups[case["case"]],
                     "ap": metrics.average_precision(anomaly, lesion, brain),
                     "auroc": metrics.voxel_auroc(anomaly, lesion, brain),
                     "max_dice": metrics.max_dice(anomaly, lesion, brain)[0],
                     "lesion_recall": float((anomaly[lesion & brain] > threshold).mean())})
    figures = {"threshold": threshold, "cases": len(rows)}
    for key in ("ap", "auroc", "max_dice", "lesion_recall"):
        figures[key] = float(np.mean([r[key] for r in rows]))
    for group in sorted({r["group"] for r in rows}):
        chosen = [r["ap"] for r in rows if r["group"] == group]
        figures[f"ap ({group}, n={len(chosen)})"] = float(np.mean(chosen))
    return figures


def removal_by_group(raw: dict[str, np.ndarray], volumes: CaseVolumes,
                     groups: dict[str, str]) -> dict[str, float]:
    """Mean over each group of (mean residual in the lesion - the same on the subject's healthy
    scan) / mean |x_lesioned - x_healthy| in the lesion."""
    healthy = {c["subject"]: c for c in volumes.cases if c["kind"] == "healthy"}
    shares: dict[str, list[float]] = {}
    for case in (c for c in volumes.cases if c["kind"] == "synthetic" and c["case"] in raw):
        original = healthy[case["subject"]]
        lesion = volumes.read(case, "lesion_mask")
        change = np.abs(volumes.read(case, "image") - volumes.read(original, "image"))[lesion]
        excess = raw[case["case"]][lesion].mean() - raw[original["case"]][lesion].mean()
        shares.setdefault(groups[case["case"]], []).append(float(excess / change.mean()))
    return {group: float(np.mean(values)) for group, values in sorted(shares.items())}


def load_maps(results: Path, method: str, volumes: CaseVolumes) -> dict[str, np.ndarray]:
    folder = results / "maps" / method
    return {c["case"]: np.load(folder / f"{c['case']}.npy").astype(np.float32)
            for c in volumes.cases if (folder / f"{c['case']}.npy").is_file()}


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
    args = parser.parse_args()

    volumes = CaseVolumes(args.cases)
    groups = lesion_groups(volumes, args.small)
    brains = {c["case"]: volumes.read(c, "brain_mask") for c in volumes.cases}
    raw = load_maps(args.results, args.method, volumes)
    table = {}
    for variant in args.variant:
        maps = {case: variant.apply(m, brains[case]) for case, m in raw.items()}
        table[f"{args.method} ({variant.name()})"] = score(maps, volumes, groups)
    for reference in args.reference:
        name, folder = reference.split("=", 1)
        table[f"{name} (as saved)"] = score(load_maps(Path(folder), name, volumes), volumes,
                                            groups)
    columns = list(next(iter(table.values())))
    print("| map | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name, figures in table.items():
        print(f"| {name} | " + " | ".join(f"{figures[c]:.3f}" if isinstance(figures[c], float)
                                         else str(figures[c]) for c in columns) + " |")
    removal = removal_by_group(raw, volumes, groups)
    print("\n| lesion undone (unfiltered) | " + " | ".join(removal) + " |")
    print("|---" * (len(removal) + 1) + "|")
    print(f"| {args.method} | " + " | ".join(f"{v:.2f}" for v in removal.values()) + " |")
    if args.json:
        args.json.write_text(json.dumps({"maps": table, "lesion_undone": removal}, indent=1))


if __name__ == "__main__":
    main()

"""Raw against normative maps (issue 11, item 6), from the maps `neuroad evaluate` saved.

For each method: its raw maps of the synthetic benchmark (the healthy validation subjects and
their lesioned copies) and, optionally, of the real cases. The normative map of a lesioned copy
is taken against the healthy statistics of the OTHER validation subjects (leave-one-out, so
that a subject's own healthy map never explains its lesion); its threshold is the 1% healthy
false-positive threshold of leave-one-out healthy normative maps, and the healthy FPR is
measured on those. Real cases use the statistics of all healthy validation maps. Raw maps use
the bundle's calibrated threshold.

    python benchmarks/normative_maps.py --method zscore=results/zscore_synthetic \
        --real-results zscore=results/zscore_real --synthetic BENCH/synthetic/cases.csv \
        --real BENCH/real/cases.csv [--clinical-results zscore=results/zscore_clinical \
        --clinical BENCH/clinical/cases.csv] --json normative.json [--choose zscore=BUNDLE]

`--choose NAME=BUNDLE` records the map with the higher synthetic AP as the method's default in
its bundle (training/map_choice.py), with these figures. `--post-filter NAME=sigma=1.5,erosion=1`
scores unfiltered maps (`--map raw` with the method's post-filter off) as the method outputs
them with those post-filter options (median side, Gaussian sigma, brain erosions).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from NeuroADLib.evaluation import metrics
from NeuroADLib.evaluation.harness import CaseVolumes
from NeuroADLib.methods.base import HEALTHY_FPR, INDEX_TOP_FRACTION, REFERENCE_SMOOTHING_SIGMA
from NeuroADLib.methods.registry import METHODS
from NeuroADLib.postprocessing import (
    ReferenceStatistics,
    abnormality_index,
    binarize,
    healthy_calibrated_threshold,
    normative_map,
    normative_threshold,
    zscore_map,
)
from NeuroADLib.postprocessing.filters import filtered_in_eroded_brain
from NeuroADLib.training.map_choice import choose_map


@dataclass(frozen=True)
class PostProcessing:
    """A median filter of side `median` (1: none), a Gaussian of `sigma` voxels (0: none), then
    zero outside the brain mask eroded `erosion` times (`filtered_in_eroded_brain`)."""

    median: int = 1
    sigma: float = 0.0
    erosion: int = 0

    @classmethod
    def parse(cls, text: str) -> PostProcessing:
        fields = dict(item.split("=", 1) for item in text.split(",") if item)
        return cls(median=int(fields.get("median", 1)), sigma=float(fields.get("sigma", 0)),
                   erosion=int(fields.get("erosion", 0)))

    def name(self) -> str:
        smoothing = [f"median {self.median}"] * (self.median > 1) + [
            f"gaussian {self.sigma:g}"] * (self.sigma > 0)
        return f"{', '.join(smoothing) or 'none'}, erosion {self.erosion}"

    def apply(self, volume: np.ndarray, brain: np.ndarray) -> np.ndarray:
        return filtered_in_eroded_brain(volume, brain, self.median, self.erosion, self.sigma)


def load_maps(results: Path, method: str, cases: list[dict],
              post: PostProcessing | None = None, volumes: CaseVolumes | None = None
              ) -> dict[str, np.ndarray]:
    """The saved maps of these cases, post-processed by `post` (each in its case's brain mask
    from `volumes`) where given: the maps a method would have written with those options."""
    maps = {}
    for case in cases:
        path = results / "maps" / method / f"{case['case']}.npy"
        if path.is_file():
            anomaly = np.load(path).astype(np.float32)
            maps[case["case"]] = (post.apply(anomaly, volumes.read(case, "brain_mask") > 0)
                                  if post else anomaly)
    return maps


def lesion_figures(anomaly, brain, lesion, threshold) -> dict:
    at = metrics.confusion_at_threshold(anomaly, lesion, threshold, brain)
    return {"auroc": metrics.voxel_auroc(anomaly, lesion, brain),
            "ap": metrics.average_precision(anomaly, lesion, brain),
            "max_dice": metrics.max_dice(anomaly, lesion, brain)[0], "dice": at["dice"]}


def flagged(anomaly: np.ndarray, brain: np.ndarray, threshold: float,
            lesion: np.ndarray | None = None) -> float:
    """The share of the brain (outside the lesion, given one) above the threshold."""
    region = brain & ~lesion if lesion is not None else brain
    return float((anomaly[region] > threshold).mean())


def compare(method: str, results: Path, volumes: CaseVolumes, real_results: Path | None,
            real: CaseVolumes | None, clinical_results: Path | None = None,
            clinical: CaseVolumes | None = None,
            smoothing_sigma: float = REFERENCE_SMOOTHING_SIGMA,
            post: PostProcessing | None = None) -> dict:
    cases = [c for c in volumes.cases if c["contrast"] == "t1"]
    maps = load_maps(results, method, cases, post, volumes)
    healthy = [c for c in cases if c["kind"] == "healthy" and c["case"] in maps]
    lesioned = [c for c in cases if c["kind"] == "synthetic" and c["case"] in maps]
    brains = {c["subject"]: volumes.read(c, "brain_mask") for c in healthy}
    healthy_maps = [maps[c["case"]] for c in healthy]
    healthy_masks = [brains[c["subject"]] for c in healthy]
    reference = ReferenceStatistics.from_healthy_maps(healthy_maps, healthy_masks,
                                                      INDEX_TOP_FRACTION, smoothing_sigma)
    raw_threshold = healthy_calibrated_threshold(healthy_maps, healthy_masks, HEALTHY_FPR)
    norm_threshold, norm_flagged = normative_threshold(healthy_maps, healthy_masks,
                                                       HEALTHY_FPR, INDEX_TOP_FRACTION,
                                                       smoothing_sigma)
    rows = {"raw": [], "normative": []}
    index = {"raw": {"healthy": [], "lesioned": []},
             "normative": {"healthy": [], "lesioned": []}}
    for k, case in enumerate(healthy):
        others = [j for j in range(len(healthy)) if j != k]
        loo = ReferenceStatistics.from_healthy_maps([healthy_maps[j] for j in others],
                                                    [healthy_masks[j] for j in others],
                                                    INDEX_TOP_FRACTION, smoothing_sigma)
        brain = healthy_masks[k]
        raw = healthy_maps[k]
        norm = normative_map(raw, loo, brain)
        index["raw"]["healthy"].append(abnormality_index(zscore_map(raw, loo), brain))
        index["normative"]["healthy"].append(abnormality_index(norm, brain))
        for copy in (c for c in lesioned if c["subject"] == case["subject"]):
            lesion = volumes.read(copy, "lesion_mask")
            raw_l = maps[copy["case"]]
            norm_l = normative_map(raw_l, loo, brain)
            rows["raw"].append(lesion_figures(raw_l, brain, lesion, raw_threshold))
            rows["normative"].append(lesion_figures(norm_l, brain, lesion, norm_threshold))
            index["raw"]["lesioned"].append(abnormality_index(zscore_map(raw_l, loo), brain))
            index["normative"]["lesioned"].append(abnormality_index(norm_l, brain))
    raw_fpr = float(np.mean([binarize(m, raw_threshold, b).sum() / b.sum()
                             for m, b in zip(healthy_maps, healthy_masks, strict=True)]))
    summary = {}
    for kind, threshold, fpr in (("raw", raw_threshold, raw_fpr),
                                 ("normative", norm_threshold, float(np.mean(norm_flagged)))):
        figures = {key: float(np.mean([r[key] for r in rows[kind]])) for key in rows[kind][0]}
        figures.update({"threshold": threshold, "healthy_fpr": fpr,
                        "subject_auroc": metrics.subject_auroc(
                            np.array(index[kind]["healthy"]),
                            np.array(index[kind]["lesioned"]))})
        summary[kind] = figures
    if real_results is not None and real is not None:
        real_cases = [c for c in real.cases if c["contrast"] == "t1"]
        real_maps = load_maps(real_results, method, real_cases, post, real)
        for kind, threshold in (("raw", raw_threshold), ("normative", norm_threshold)):
            figures = []
            for case in (c for c in real_cases if c["case"] in real_maps):
                brain, lesion = real.read(case, "brain_mask"), real.read(case, "lesion_mask")
                anomaly = real_maps[case["case"]]
                if kind == "normative":
                    anomaly = normative_map(anomaly, reference, brain)
                figures.append({**lesion_figures(anomaly, brain, lesion, threshold),
                                "outside": flagged(anomaly, brain, threshold, lesion)})
            summary[kind]["real_ap"] = float(np.mean([f["ap"] for f in figures]))
            summary[kind]["real_dice"] = float(np.mean([f["dice"] for f in figures]))
            summary[kind]["real_flagged_outside_lesion"] = float(np.mean(
                [f["outside"] for f in figures]))
    if clinical_results is not None and clinical is not None:
        clinical_maps = load_maps(clinical_results, method, clinical.cases, post, clinical)
        for kind, threshold in (("raw", raw_threshold), ("normative", norm_threshold)):
            shares = {"clinical_acquisition": [], "clinical_demo": []}
            for case in (c for c in clinical.cases if c["case"] in clinical_maps):
                brain = clinical.read(case, "brain_mask")
                anomaly = clinical_maps[case["case"]]
                if kind == "normative":
                    anomaly = normative_map(anomaly, reference, brain)
                shares[case["kind"]].append(flagged(anomaly, brain, threshold))
            summary[kind]["clinical_flagged"] = float(np.mean(shares["clinical_acquisition"]))
            summary[kind]["demo_flagged"] = float(np.mean(shares["clinical_demo"]))
    summary["healthy_maps"] = (healthy_maps, healthy_masks)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", action="append", required=True,
                        help="NAME=RESULTS: a method and its `neuroad evaluate` folder of the "
                             "synthetic benchmark")
    parser.add_argument("--real-results", action="append", default=[],
                        help="NAME=RESULTS: its folder of the real cases")
    parser.add_argument("--synthetic", required=True, help="synthetic cases.csv")
    parser.add_argument("--real", help="real cases.csv")
    parser.add_argument("--clinical-results", action="append", default=[],
                        help="NAME=RESULTS: its folder of the clinical-acquisition cases")
    parser.add_argument("--clinical", help="the clinical-acquisition cases.csv evaluated")
    parser.add_argument("--json", help="write the figures here too")
    parser.add_argument("--smoothing-sigma", type=float, default=REFERENCE_SMOOTHING_SIGMA,
                        help="voxels the healthy statistics pool (default: the calibration's "
                             f"{REFERENCE_SMOOTHING_SIGMA})")
    parser.add_argument("--choose", action="append", default=[],
                        help="NAME=BUNDLE: record the better map as the bundle's default")
    parser.add_argument("--post-filter", action="append", default=[],
                        help="NAME=median=M,sigma=S,erosion=E: post-process that method's saved "
                             "unfiltered maps so first, as its options would")
    args = parser.parse_args()
    post = {name: PostProcessing.parse(text)
            for name, text in (item.split("=", 1) for item in args.post_filter)}
    volumes = CaseVolumes(args.synthetic)
    real = CaseVolumes(args.real) if args.real else None
    real_results = dict(item.split("=", 1) for item in args.real_results)
    clinical = CaseVolumes(args.clinical) if args.clinical else None
    clinical_results = dict(item.split("=", 1) for item in args.clinical_results)
    figures, healthy_maps = {}, {}
    print("| method | map | AUROC | AP | max Dice | Dice at threshold | healthy FPR | "
          "subject AUROC | real T1 AP | real T1 Dice | real outside lesion | clinical | demo |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for item in args.method:
        name, results = item.split("=", 1)
        real_folder = Path(real_results[name]) if name in real_results else None
        clinical_folder = (Path(clinical_results[name]) if name in clinical_results
                           else None)
        figures[name] = compare(name, Path(results), volumes, real_folder, real,
                                clinical_folder, clinical, args.smoothing_sigma,
                                post.get(name))
        healthy_maps[name] = figures[name].pop("healthy_maps")
        for kind, f in figures[name].items():
            extra = [f.get(key, np.nan) for key in ("real_ap", "real_dice")]
            shares = [f.get(key, np.nan) for key in ("real_flagged_outside_lesion",
                                                     "clinical_flagged", "demo_flagged")]
            print(f"| {name} | {kind} | {f['auroc']:.3f} | {f['ap']:.3f} | {f['max_dice']:.3f} "
                  f"| {f['dice']:.3f} | {f['healthy_fpr']:.2%} | {f['subject_auroc']:.3f} | "
                  + " | ".join(f"{v:.3f}" for v in extra) + " | "
                  + " | ".join(f"{v:.1%}" for v in shares) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    for item in args.choose:
        name, bundle = item.split("=", 1)
        kind = max(("raw", "normative"), key=lambda k: figures[name][k]["ap"])
        choose_map(bundle, METHODS[name].calibration, kind,
                   {"rule": "the map with the higher AP on the synthetic benchmark",
                    **figures[name]}, *healthy_maps[name], args.smoothing_sigma)
        print(f"{name}: {kind} maps by default in {bundle}")


if __name__ == "__main__":
    main()

"""The benchmark harness: every method on every case, metrics, summaries and pictures.

Per case: the anomaly map (saved, and read back instead of recomputed when present, which
makes runs resumable), voxel AUROC, average precision, the ORACLE max Dice (uses the lesion
labels: evaluation only), Dice / precision / recall at the method's healthy-calibrated
threshold (the product default, no labels), lesion-wise detection rate, the flagged fraction of
brain voxels (the healthy false-positive rate on healthy cases), and the CADD-style abnormality
index. Per method: mean and 95% CI per case kind, subject-level AUROC of the index (healthy vs
lesioned), a markdown table, and a picture of its best and worst lesion cases.

Cases come from a manifest (cases.csv, volumes read with SimpleITK) or from its grid pack
(`neuroad pack`, numpy only, for a GPU server without SimpleITK). Maps are saved as float16
.npy files on the grid, and the figures are computed from the saved values.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.segmentation import find_boundaries
from tqdm import tqdm

from ..gridpack import is_pack, read_grid_file, read_pack
from ..methods import LoadedMethod
from ..postprocessing import abnormality_index, binarize
from ..subject import Subject
from . import metrics

# The normative check moves ages towards the other end of the adult range, so that the wrong
# age stays inside the ages the models were trained on.
AGE_SHIFT_PIVOT = 50.0

METRICS = ["auroc", "ap", "max_dice_oracle", "dice", "precision", "recall", "detection_rate",
           "flagged_fraction", "flagged_ml", "flagged_outside_lesion", "abnormality_index"]


class CaseVolumes:
    """The cases of a benchmark manifest or grid pack, and their grid volumes."""

    def __init__(self, manifest: str | os.PathLike) -> None:
        self.pack = read_pack(manifest) if is_pack(manifest) else None
        if self.pack is not None:
            self.cases = [{**row, "index": k} for k, row in enumerate(self.pack.rows)]
        else:
            from .cases import read_cases  # SimpleITK: only for manifests of files

            self.cases = read_cases(manifest)

    def read(self, case: dict, key: str) -> np.ndarray | None:
        """image (float32), brain_mask or lesion_mask (bool); None where the case has none."""
        if self.pack is not None:
            return self.pack.volume(case["index"], key)
        if not case[key]:
            return None
        array = read_grid_file(case[key])
        return array if key == "image" else array > 0


def case_metrics(anomaly: np.ndarray, brain: np.ndarray, lesion: np.ndarray | None,
                 method: LoadedMethod, voxel_ml: float = 0.008) -> dict:
    """Every per-case figure of one anomaly map (`voxel_ml`: the grid's voxel volume)."""
    threshold = method.calibration.output_threshold
    segmentation = binarize(anomaly, threshold, brain)
    z = method.calibration.index_zmap(anomaly)
    result = {"flagged_fraction": float(segmentation.sum() / brain.sum()),
              "flagged_ml": float(segmentation.sum() * voxel_ml),
              "abnormality_index": abnormality_index(
                  z, brain, method.calibration.reference.top_fraction)}
    if lesion is not None and lesion[brain].any():
        # What a reader would have to dismiss: flagged healthy tissue around the lesion.
        outside = brain & ~lesion
        result["flagged_outside_lesion"] = float(segmentation[outside].sum() / outside.sum())
        at = metrics.confusion_at_threshold(anomaly, lesion, threshold, brain)
        result.update({
            "auroc": metrics.voxel_auroc(anomaly, lesion, brain),
            "ap": metrics.average_precision(anomaly, lesion, brain),
            "max_dice_oracle": metrics.max_dice(anomaly, lesion, brain)[0],
            "dice": at["dice"], "precision": at["precision"], "recall": at["recall"],
            "detection_rate": metrics.lesion_detection_rate(segmentation, lesion & brain),
        })
    return result


def shifted_age(age: float, shift: float) -> float:
    """`shift` years older below AGE_SHIFT_PIVOT, `shift` years younger from it on."""
    return age + shift if age < AGE_SHIFT_PIVOT else age - shift


def evaluate(methods: dict[str, LoadedMethod], manifest: str | os.PathLike,
             out: str | os.PathLike, show_progress: bool = True, age_shift: float = 0.0
             ) -> Path:
    """Run the benchmark; writes cases.csv, summary.json, summary.md and pictures into out.
    `age_shift` gives every case a wrong age (see `shifted_age`): the normative check of
    age-conditioned methods."""
    out = Path(out)
    volumes = CaseVolumes(manifest)
    rows = []
    jobs = [(name, case) for name, method in methods.items() for case in volumes.cases
            if case["contrast"] == method.contrast]
    for name, case in tqdm(jobs, desc="evaluate", unit="case", disable=not show_progress):
        method = methods[name]
        maps = out / "maps" / name
        maps.mkdir(parents=True, exist_ok=True)
        map_path = maps / f"{case['case']}.npy"
        brain = volumes.read(case, "brain_mask")
        if not map_path.is_file():
            age = shifted_age(float(case["age"]), age_shift) if case["age"] else None
            anomaly = method.anomaly_map(volumes.read(case, "image"), brain,
                                         Subject(age, case["sex"] or None))
            np.save(map_path, anomaly.astype(np.float16))
        anomaly = np.load(map_path).astype(np.float32)  # the saved values: resumes agree
        rows.append({"method": name, "case": case["case"], "kind": case["kind"],
                     **case_metrics(anomaly, brain, volumes.read(case, "lesion_mask"), method)})
    _write_rows(rows, out / "cases.csv")
    summary = summarise(rows, methods)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(markdown_table(summary))
    for name in methods:
        lesion_rows = [r for r in rows if r["method"] == name and "ap" in r]
        _best_and_worst(name, methods[name].calibration.output_threshold, lesion_rows, volumes, out)
    return out


def summarise(rows: list[dict], methods: dict[str, LoadedMethod]) -> dict:
    summary = {}
    for name, method in methods.items():
        mine = [r for r in rows if r["method"] == name]
        per_kind = {}
        for kind in sorted({r["kind"] for r in mine}):
            of_kind = [r for r in mine if r["kind"] == kind]
            per_kind[kind] = {"cases": len(of_kind)}
            for metric in METRICS:
                values = [r[metric] for r in of_kind if metric in r]
                if len(values) >= 2:
                    mean, low, high = metrics.mean_with_ci(values)
                    per_kind[kind][metric] = {"mean": mean, "ci95": [low, high]}
                elif values:
                    per_kind[kind][metric] = {"mean": values[0], "ci95": None}
        healthy = [r["abnormality_index"] for r in mine if r["kind"] == "healthy"]
        lesioned = [r["abnormality_index"] for r in mine if r["kind"] == "synthetic"]
        summary[name] = {
            "threshold": method.calibration.output_threshold,
            "map": method.calibration.map_kind,
            "threshold_rule": f"healthy-calibrated: at most {method.calibration.fpr:.1%} of "
                              "healthy validation brain voxels above it",
            "by_kind": per_kind,
            "subject_auroc_index_healthy_vs_synthetic": (
                metrics.subject_auroc(healthy, lesioned) if healthy and lesioned else None),
        }
    return summary


def markdown_table(summary: dict) -> str:
    shown = ["auroc", "ap", "max_dice_oracle", "dice", "flagged_fraction", "flagged_ml",
             "flagged_outside_lesion"]
    lines = ["| method | cases | n | " + " | ".join(shown) + " |",
             "|---|---|---|" + "---|" * len(shown)]
    for name, entry in summary.items():
        for kind, figures in entry["by_kind"].items():
            cells = []
            for metric in shown:
                if metric not in figures:
                    cells.append("")
                    continue
                mean, ci = figures[metric]["mean"], figures[metric]["ci95"]
                cells.append(f"{mean:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
            lines.append(f"| {name} | {kind} | {figures['cases']} | " + " | ".join(cells) + " |")
        auroc = entry["subject_auroc_index_healthy_vs_synthetic"]
        if auroc is not None:
            lines.append(f"\n{name}: subject-level AUROC of the abnormality index (healthy vs "
                         f"synthetic) = {auroc:.3f}; threshold {entry['threshold']:.3f} "
                         f"({entry['threshold_rule']}).\n")
    lines.append("\nmax_dice_oracle picks the best threshold per case with the lesion labels: "
                 "an upper bound for evaluation only. dice uses the label-free threshold. "
                 "flagged_fraction on healthy cases is the healthy false-positive rate; on "
                 "clinical_acquisition cases, the healthy false-positive rate under other "
                 "acquisitions; flagged_outside_lesion, the share of the healthy tissue of a "
                 "lesion case that is flagged.")
    return "\n".join(lines) + "\n"


def _write_rows(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["method", "case", "kind", *METRICS])
        writer.writeheader()
        writer.writerows(rows)


def _best_and_worst(name: str, threshold: float, rows: list[dict], volumes: CaseVolumes,
                    out: Path) -> None:
    """Axial slice with the most lesion of the best and worst case (by AP): image with the lesion
    outline (red) and the map above threshold (yellow), and the map itself."""
    if not rows:
        return
    ranked = sorted(rows, key=lambda r: r["ap"])
    by_name = {c["case"]: c for c in volumes.cases}
    panels = []
    for row in (ranked[-1], ranked[0]):
        case = by_name[row["case"]]
        image = volumes.read(case, "image")
        lesion = volumes.read(case, "lesion_mask")
        anomaly = np.load(out / "maps" / name / f"{row['case']}.npy").astype(np.float32)
        z = int(np.argmax(lesion.sum(axis=(1, 2))))  # the slice with most lesion
        grey = np.repeat((np.clip(image[z], 0, 1) * 255).astype(np.uint8)[..., None], 3, 2)
        overlay = grey.copy()
        overlay[find_boundaries(anomaly[z] > threshold, mode="inner")] = (255, 220, 0)
        overlay[find_boundaries(lesion[z], mode="inner")] = (255, 40, 40)
        scale = max(float(anomaly.max()), 1e-6)
        heat = (np.clip(anomaly[z] / scale, 0, 1) * 255).astype(np.uint8)
        heat_rgb = np.stack([heat, np.zeros_like(heat), 255 - heat], axis=-1)
        heat_rgb[anomaly[z] == 0] = 0
        panels.append(np.concatenate([np.flipud(overlay), np.flipud(heat_rgb)], axis=1))
    picture = Image.fromarray(np.concatenate(panels, axis=0)).resize(
        (panels[0].shape[1] * 3, panels[0].shape[0] * 6), Image.NEAREST)
    picture.save(out / f"best_worst_{name}.png")


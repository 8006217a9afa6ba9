"""Why do healthy scans from other scanners light up? Each factor's effect on the flagged
share of the brain, measured with a model before and after harmonisation.

1. Real T1 scans from other scanners (the clinical demo, ms_patient19, tcga_du_7294) against
   the IXI validation scans: white-matter level before harmonisation, grey/white contrast,
   the correction the harmonisation applied (median gain, gain spread), source voxel size,
   correlation with the template, and the flagged share outside the lesion for each model.
2. One factor at a time on the IXI validation scans, at the level measured on the real scans:
   tissue contrast, a bright rim in the mask (the brightness scale), the mask extent (more
   CSF, as skull-stripped inputs bring), thick slices, residual bias, blur, noise, and a
   registration error (a 2 mm shift): the mean flagged share for each model.

    python benchmarks/scanner_shift.py --cohort CACHE --real BENCH/real --demo DEMO \
        --model before=OLD_ZSCORE_BUNDLE --model after=NEW_ZSCORE_BUNDLE [--json OUT.json]

DEMO is the clinical demo's folder of `neuroad make-benchmarks` (BENCH/clinical/clinical_demo).
Prints two markdown tables.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from NeuroADLib.gridpack import read_grid_file
from NeuroADLib.methods import load_method
from NeuroADLib.subject import Subject
from NeuroADLib.synthesis.acquisition import AcquisitionConfig, augment_acquisition

NO_EFFECT = {"contrast_gamma": (1.0, 1.0), "bias_amplitude": (0.0, 0.0),
             "slice_thickness_mm": (2.0, 2.0), "blur_sigma_mm": (0.0, 0.0),
             "noise_std": (0.0, 0.0), "bright_rim_fraction": (0.0, 0.0)}
# One factor at a time, at the level seen on the real scans (README, Scanner robustness).
FACTORS = {
    "none (IXI as is)": {},
    "contrast (gamma 0.7)": {"contrast_gamma": (0.7, 0.7)},
    "contrast (gamma 1.25)": {"contrast_gamma": (1.25, 1.25)},
    "bright rim 2% (scale)": {"bright_rim_fraction": (0.02, 0.02)},
    "thick slices 5.5 mm": {"slice_thickness_mm": (5.5, 5.5)},
    "residual bias 20%": {"bias_amplitude": (0.2, 0.2)},
    "blur 1.5 mm": {"blur_sigma_mm": (1.5, 1.5)},
    "noise 3%": {"noise_std": (0.03, 0.03)},
}
REAL = {"clinical demo (0.9x0.9x5.5 mm)": ("demo", None),
        "ms_patient19 (1 mm, stripped)": ("ms_patient19", "lesion_mask.nii.gz"),
        "tcga_du_7294 (1 mm, stripped)": ("tcga_du_7294", "lesion_mask.nii.gz")}


def flagged(method, image: np.ndarray, brain: np.ndarray, age: float | None,
            outside: np.ndarray | None = None) -> float:
    anomaly = method.anomaly_map(image, brain, Subject(age))
    region = brain if outside is None else brain & outside
    return float((anomaly[region] > method.calibration.output_threshold).mean())


def validation_scans(cohort: Path) -> list[tuple[np.ndarray, np.ndarray, float]]:
    rows = [r for r in csv.DictReader((cohort / "cohort.csv").open())
            if r["split"] == "validation" and r["status"] == "ok"]
    return [(read_grid_file(cohort / r["image"]), read_grid_file(cohort / r["brain_mask"]) > 0,
             float(r["age"])) for r in rows]


def real_scans(real: Path, demo: Path) -> dict[str, tuple]:
    scans = {}
    for label, (name, lesion) in REAL.items():
        folder = demo if name == "demo" else real / name
        image = folder / "t1.nii.gz"
        brain = read_grid_file(folder / "brain_mask.nii.gz") > 0
        mask = read_grid_file(folder / lesion) > 0 if lesion else np.zeros_like(brain)
        scans[label] = (read_grid_file(image), brain, ~mask)
    return scans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", type=Path, required=True)
    parser.add_argument("--real", type=Path, required=True)
    parser.add_argument("--demo", type=Path, required=True)
    parser.add_argument("--model", action="append", required=True, help="LABEL=BUNDLE_FOLDER")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--seed", type=int, default=20261202)
    parser.add_argument("--subjects", type=int, default=25,
                        help="validation subjects for the factor table (all for the first)")
    args = parser.parse_args()
    models = {label: load_method("zscore", folder) for label, folder in
              (item.split("=", 1) for item in args.model)}
    labels = list(models)
    validation = validation_scans(args.cohort)
    results = {"real": {}, "factors": {}}

    print("| scan | WM level | GM/WM | gain median | gain spread | "
          + " | ".join(f"flagged ({m})" for m in labels) + " |")
    print("|---|---|---|---|---|" + "---|" * len(labels))
    harmonised_model = next((m for m in models.values() if m.standard is not None), None)
    rows = [(f"IXI validation (mean of {len(validation)})", None)] + list(
        real_scans(args.real, args.demo).items())
    for label, scan in rows:
        entries = [(image, brain, age, None) for image, brain, age in validation] if scan is None \
            else [(scan[0], scan[1], None, scan[2])]
        stats = []
        if harmonised_model is not None:
            for image, brain, _, _ in entries:
                harmonised, gain = harmonised_model.standard.harmonise(image, brain)
                stats.append(harmonised_model.standard.statistics(image, harmonised, brain, gain))
        mean_stats = {k: float(np.mean([s[k] for s in stats])) for k in stats[0]} if stats else {}
        shares = {m: float(np.mean([flagged(models[m], image, brain, age, outside)
                                    for image, brain, age, outside in entries])) for m in labels}
        results["real"][label] = {"statistics": mean_stats, "flagged": shares}
        cells = [f"{mean_stats.get(k, float('nan')):.3f}" for k in
                 ("white_matter_level", "contrast_ratio", "gain_median", "gain_spread")]
        print(f"| {label} | " + " | ".join(cells) + " | "
              + " | ".join(f"{100 * shares[m]:.1f}%" for m in labels) + " |")

    print(f"\n| factor applied to {min(args.subjects, len(validation))} IXI validation scans | "
          + " | ".join(f"flagged ({m})" for m in labels) + " |")
    print("|---|" + "---|" * len(labels))
    factors = dict(FACTORS)
    factors["mask +2 mm (more CSF)"] = "dilate"
    factors["registration 2 mm off"] = "shift"
    for name, factor in factors.items():
        shares = {m: [] for m in labels}
        for k, (image, brain, age) in enumerate(validation[:args.subjects]):
            if factor == "dilate":  # the added rim at a CSF-like 0.3 of the scale
                brain_used = ndimage.binary_dilation(brain)
                degraded = np.where(brain_used & ~brain, 0.3, image).astype(np.float32)
            elif factor == "shift":
                brain_used = brain
                degraded = ndimage.shift(image, (0, 1, 0), order=1) * brain
            else:
                config = AcquisitionConfig(probability=1.0, **{**NO_EFFECT, **factor})
                degraded, _ = augment_acquisition(image, brain, args.seed + k, config)
                brain_used = brain
            for m in labels:
                shares[m].append(flagged(models[m], degraded, brain_used, age))
        results["factors"][name] = {m: float(np.mean(v)) for m, v in shares.items()}
        print(f"| {name} | " + " | ".join(f"{100 * np.mean(shares[m]):.1f}%" for m in labels)
              + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""Why does SDM + FAM flag healthy brains under clinical acquisitions? Per case of a grid case
table: where the pixel distance D_p is large (the brain's outer 2 voxels against deeper), the
feature distance D_f, the scale max(D_p) / max(D_f) that eq. 3.5 applies per scan (over the
region the bundle takes its maxima in), and the
share of the brain each map flags at its bundle's calibrated threshold: `sdm_fam` as shipped
(the per-scan scale), the same with one fixed scale (the median over the table's healthy cases)
and `sdm` (D_p alone). Then eq. 3.5 with its maxima taken over the whole brain
(`scale_in_eroded_brain=0`, as bundles before the option) against over the brain eroded as the
post-processing erodes it (where the map is kept; `=1`, the default), each
thresholded at 1% of the table's healthy brain voxels: flagged shares and the mean AP of the
lesioned cases.

    python benchmarks/sdm_fam_acquisitions.py --bundle NeuroADLib/models/bundled/sdm-ixi-2mm \
        --cases CASES.csv --maps DIR [--threads 2]

Each case's D_p, D_f and brain are kept in DIR (one .npz a case) and reused on a re-run.
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from NeuroADLib.evaluation.metrics import average_precision
from NeuroADLib.methods.base import Calibration, LoadedMethod, load_method
from NeuroADLib.methods.sdm import fam_score

RIM_VOXELS = 2


def distances(loaded: LoadedMethod, image_path: str, mask_path: str) -> dict[str, np.ndarray]:
    """D_p and D_f of one grid case, as the `sdm_fam` method computes them."""
    image = sitk.GetArrayFromImage(sitk.ReadImage(image_path)).astype(np.float32)
    brain = sitk.GetArrayFromImage(sitk.ReadImage(mask_path)) > 0
    harmonised, _, _ = loaded.harmonise(image, brain)
    scores = loaded.model.scores(harmonised, brain)
    return {"pixel": scores.pixel, "feature": scores.feature, "brain": brain}


def flagged(loaded: LoadedMethod, score: np.ndarray, brain: np.ndarray) -> float:
    """Share of the brain above the bundle's threshold after the method's post-processing."""
    processed = loaded.model.postprocess((score * brain).astype(np.float32), brain)
    return float((processed[brain] > loaded.calibration.output_threshold).mean())


def compare_scale_regions(loaded: LoadedMethod, cases: list) -> None:
    """Eq. 3.5's maxima over the whole brain against over the eroded brain
    (`scale_in_eroded_brain` 0 and 1), each thresholded on the table's healthy cases."""
    weight = loaded.model.settings.pixel_weight
    print("\n| eq. 3.5 maxima over | threshold (healthy cases) | healthy flagged (mean; max) | "
          "acquisitions flagged (mean; max; above 2%) | demo flagged | lesioned AP (mean) |")
    print("|---|---|---|---|---|---|")
    regions = (("the brain (scale_in_eroded_brain=0)", 0),
               ("the eroded brain (scale_in_eroded_brain=1)", 1))
    for label, value in regions:
        model = replace(loaded.model, settings=replace(loaded.model.settings,
                                                       scale_in_eroded_brain=value))
        maps = {case: model.postprocess(fam_score(p, f, b, weight, model.scale_region(b)), b)
                for case, _, p, f, b, _ in cases}
        healthy = [case for case in cases if case[1] == "healthy"]
        threshold = Calibration.from_healthy_maps([maps[c[0]] for c in healthy],
                                                  [c[4] for c in healthy]).threshold
        shares: dict[str, list[float]] = {}
        for case, kind, _, _, b, _ in cases:
            shares.setdefault(kind, []).append(float((maps[case][b] > threshold).mean()))
        quiet = shares.get("healthy", [])
        acquired = shares.get("clinical_acquisition", [])
        demo = shares.get("clinical_demo", [])
        ap = [average_precision(maps[c], lesion, b) for c, _, _, _, b, lesion in cases
              if lesion is not None]
        print(f"| {label} | {threshold:.4f} | "
              f"{np.mean(quiet):.2%}; {max(quiet, default=0.0):.1%} | "
              f"{np.mean(acquired):.2%}; {max(acquired, default=0.0):.1%}; "
              f"{sum(a > 0.02 for a in acquired)} of {len(acquired)} | "
              f"{', '.join(f'{d:.1%}' for d in demo) or '-'} | "
              f"{np.mean(ap) if ap else float('nan'):.3f} ({len(ap)} cases) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--cases", required=True, help="grid case table (case, kind, image, "
                        "brain_mask; relative paths from its folder)")
    parser.add_argument("--maps", required=True, help="folder keeping each case's distances")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    fam, pixel_only = load_method("sdm_fam", args.bundle), load_method("sdm", args.bundle)
    maps = Path(args.maps)
    maps.mkdir(parents=True, exist_ok=True)
    table = Path(args.cases)
    cases = []
    with table.open(newline="") as handle:
        for row in csv.DictReader(handle):
            stored = maps / f"{row['case']}.npz"
            if not stored.is_file():
                np.savez_compressed(stored, **distances(
                    fam, str(table.parent / row["image"]), str(table.parent / row["brain_mask"])))
            lesion = (sitk.GetArrayFromImage(sitk.ReadImage(str(table.parent /
                                                             row["lesion_mask"]))) > 0
                      if row.get("lesion_mask") else None)
            with np.load(stored) as data:
                cases.append((row["case"], row["kind"], data["pixel"], data["feature"],
                              data["brain"] > 0, lesion))
    weight = fam.model.settings.pixel_weight
    healthy_scales = [p[b].max() / f[b].max() for _, kind, p, f, b, _ in cases
                      if kind == "healthy"]
    fixed = float(np.median(healthy_scales)) if healthy_scales else float("nan")
    print(f"fixed scale (median over {len(healthy_scales)} healthy cases): {fixed:.2f}")
    print("| case | kind | max D_p | D_p q99, outer 2 voxels | D_p q99, deeper | mean D_f | "
          "scale (eq. 3.5) | sdm_fam flagged | fixed scale flagged | sdm flagged |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for case, kind, p, f, b, _ in cases:
        depth = ndimage.distance_transform_edt(b)
        rim, deep = b & (depth <= RIM_VOXELS), depth > RIM_VOXELS
        region = fam.model.scale_region(b)
        scale = p[region].max() / f[region].max()
        print(f"| {case} | {kind} | {p[b].max():.3f} | {np.quantile(p[rim], 0.99):.3f} | "
              f"{np.quantile(p[deep], 0.99):.3f} | {f[b].mean():.4f} | {scale:.2f} | "
              f"{flagged(fam, fam_score(p, f, b, weight, region), b):.1%} | "
              f"{flagged(fam, weight * p + fixed * f, b):.1%} | "
              f"{flagged(pixel_only, p, b):.1%} |")
    compare_scale_regions(fam, cases)


if __name__ == "__main__":
    main()

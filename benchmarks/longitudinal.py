"""The longitudinal benchmark (README "Longitudinal"): SDM, SDM + FAM, SDM + FAM + LAFM and
zscore on every visit of the healthy and growing-lesion sequences that `neuroad
make-benchmarks` builds, at the per-patient Yen threshold and at each method's
healthy-calibrated threshold.

    python benchmarks/longitudinal.py --sdm NeuroADLib/models/bundled/sdm-ixi-2mm \
        --zscore NeuroADLib/models/bundled/zscore-ixi-2mm \
        --visits ~/neuroad-cache/bench/longitudinal/visits.csv --out results/longitudinal
"""

from __future__ import annotations

import argparse

from NeuroADLib.evaluation.longitudinal import VARIANTS, evaluate_visits


def table(summary: dict) -> str:
    """One row per variant and visit, in markdown."""
    lines = ["| method | visit | AP | Dice (Yen) | Dice (calibrated) | healthy FPR (Yen) | "
             "healthy FPR (calibrated) |", "|---|---|---|---|---|---|---|"]
    for variant in VARIANTS:
        for visit, figures in summary[variant].items():
            cells = [f"{figures[key]:.3f}" if figures[key] is not None else "-"
                     for key in ("ap", "dice_yen", "dice_calibrated", "healthy_yen_fpr",
                                 "healthy_calibrated_fpr")]
            lines.append(f"| {variant} | {visit} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sdm", required=True, help="SDM bundle folder")
    parser.add_argument("--zscore", required=True, help="zscore bundle folder")
    parser.add_argument("--visits", required=True, help="visits.csv of the longitudinal set")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    summary = evaluate_visits(args.sdm, args.zscore, args.visits, args.out)
    print(table(summary))


if __name__ == "__main__":
    main()

"""The longitudinal method with a missing visit (README "Longitudinal"): on the three-visit
sequences that `neuroad make-benchmarks` builds, LAFM over visits 1 and 3 alone, with a visit
imputed by TDM at visit 2's age, and with all three real visits; AP and Yen Dice on visits 1
and 3, and the Yen-flagged share of the healthy sequences' brains. `--record` writes the
figures and the command into the TDM bundle's manifest (`benchmark`; the manifest is not among
the files it hashes, so the bundle still verifies).

    python benchmarks/missing_visit.py --sdm NeuroADLib/models/bundled/sdm-ixi-2mm \
        --tdm NeuroADLib/models/bundled/tdm-ixi-2mm \
        --visits ~/neuroad-cache/bench/longitudinal/visits.csv --out results/missing_visit
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from NeuroADLib.evaluation.longitudinal import MISSING_SCENARIOS, evaluate_missing_visit


def table(summary: dict) -> str:
    """One row per scenario and visit, in markdown."""
    lines = ["| visits fused | visit | AP | Dice (Yen) | healthy FPR (Yen) |",
             "|---|---|---|---|---|"]
    for scenario in MISSING_SCENARIOS:
        for visit, figures in summary[scenario].items():
            cells = [f"{figures[key]:.3f}" if figures[key] is not None else "-"
                     for key in ("ap", "dice_yen", "healthy_yen_fpr")]
            lines.append(f"| {scenario} | {visit} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sdm", required=True, help="SDM bundle folder")
    parser.add_argument("--tdm", required=True, help="TDM bundle folder")
    parser.add_argument("--visits", required=True, help="visits.csv of the longitudinal set")
    parser.add_argument("--out", required=True)
    parser.add_argument("--record", action="store_true",
                        help="write the figures into the TDM bundle's manifest")
    args = parser.parse_args()
    summary = evaluate_missing_visit(args.sdm, args.tdm, args.visits, args.out)
    print(table(summary))
    if args.record:
        path = Path(args.tdm) / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest["benchmark"] = {"missing_visit": summary,
                                 "command": " ".join(["python", *sys.argv])}
        path.write_text(json.dumps(manifest, indent=2, default=float))


if __name__ == "__main__":
    main()

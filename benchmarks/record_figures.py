"""Record a bundle's measured benchmark figures in its manifest (`benchmark`), beside what
training wrote there: each method's figures from `benchmarks/normative_maps.py`
(normative.json), zscore's on the same cases, the noise- and sharpness-matching figures of
`benchmarks/acquisition_matching.py`, the per-visit figures of `benchmarks/longitudinal.py`, the
commands and the cases. The manifest is not among the
files it hashes, so the bundle still verifies.

    python benchmarks/record_figures.py --bundle models/ddpm \
        --figures results/thor/normative.json --figures results/autoddpm/normative.json \
        --baseline results/zscore/normative.json --matching thor=am_thor.json \
        --cases "the first 10 healthy validation subjects and their 30 lesioned copies" \
        --command "METHOD=thor ... bash benchmarks/method_figures.sh"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--figures", action="append", required=True,
                        help="normative.json of a method the bundle serves")
    parser.add_argument("--baseline", required=True, help="zscore's normative.json, same cases")
    parser.add_argument("--matching", action="append", default=[],
                        help="METHOD=acquisition_matching.py --json output")
    parser.add_argument("--longitudinal", help="summary.json of benchmarks/longitudinal.py")
    parser.add_argument("--cases", required=True, help="which cases, in words")
    parser.add_argument("--command", action="append", required=True)
    args = parser.parse_args()
    manifest_path = Path(args.bundle) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    figures = {}
    for path in args.figures:
        figures.update(json.loads(Path(path).read_text()))
    baseline = json.loads(Path(args.baseline).read_text())
    matching = {}
    for entry in args.matching:
        method, path = entry.split("=", 1)
        measured = json.loads(Path(path).read_text())
        matching[method] = {key: measured[key] for key in ("real", "sharpened") if key in measured}
    manifest["benchmark"] = {"cases": args.cases, "commands": args.command, "figures": figures,
                             "zscore_on_the_same_cases": baseline,
                             "acquisition_matching": matching}
    if args.longitudinal:
        manifest["benchmark"]["longitudinal"] = json.loads(Path(args.longitudinal).read_text())
    manifest_path.write_text(json.dumps(manifest, indent=2, default=float))
    for method, maps in figures.items():
        print(f"{method}: AP {maps['raw']['ap']:.3f} raw, zscore "
              f"{baseline['zscore']['raw']['ap']:.3f}")


if __name__ == "__main__":
    main()

"""Cohort quality control: contact sheets of every brain mask on its native scan, and the
cohort's brain volumes and template correlations.

    python benchmarks/cohort_qc.py CACHE --data ../shared/data/ixi_t1_2mm --out qc_sheets

Writes sheets of 30 subjects (sheet_01.png, ...) and prints the statistics as JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from NeuroADLib.preprocessing.files import NATIVE_BRAIN_MASK
from NeuroADLib.qc import contact_sheet, orthogonal_slices

PER_SHEET = 30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="folder of the native scans")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = list(csv.DictReader((args.cache / "cohort.csv").open()))
    ok = [r for r in rows if r["status"] == "ok"]
    strips = []
    for number, row in enumerate(ok, start=1):
        native = sitk.ReadImage(str(args.data / row["file"]))
        mask = sitk.ReadImage(str(args.cache / "subjects" / row["subject"] / NATIVE_BRAIN_MASK))
        title = f"{number} {row['subject']} {float(row['brain_volume_ml']):.0f} mL"
        strips.append((title, orthogonal_slices(native, mask, size=110)))
    for sheet, start in enumerate(range(0, len(strips), PER_SHEET), start=1):
        contact_sheet(strips[start:start + PER_SHEET], args.out / f"sheet_{sheet:02d}.png")
    volumes = np.array([float(r["brain_volume_ml"]) for r in ok])
    ncc = np.array([float(r["ncc_with_template"]) for r in ok])
    print(json.dumps({
        "subjects": len(rows), "processed": len(ok),
        "failed": {r["subject"]: r["status"] for r in rows if r["status"] != "ok"},
        "brain_volume_ml": {"min": volumes.min(), "median": float(np.median(volumes)),
                            "max": volumes.max(),
                            "outside_1000_2000": int(((volumes < 1000) | (volumes > 2000)).sum())},
        "ncc_with_template": {"min": ncc.min(), "median": float(np.median(ncc)),
                              "max": ncc.max(), "lowest": [
                                  ok[i]["subject"] for i in np.argsort(ncc)[:5]]},
        "splits": {s: sum(r["split"] == s for r in rows) for s in ("train", "validation")},
    }, indent=2, default=float))


if __name__ == "__main__":
    main()

"""`neuroad batch`: every case of a table through `pipeline.run`, one failure never stopping
the others, resumable, with one summary table.

The case table is a CSV with columns `path, age, sex` and optionally `brain_mask` and `case`
(an output name; by default the file name without its extension).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from tqdm import tqdm

from .errors import InputError, NeuroADError
from .pipeline import run

SUMMARY = "summary.csv"


def read_case_table(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Case table not found: {path}")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    missing = {"path", "age", "sex"} - set(rows[0] if rows else {})
    if missing:
        raise InputError(f"{path} lacks the column(s) {', '.join(sorted(missing))}.")
    names = set()
    for row in rows:
        name = row.get("case") or Path(row["path"]).name.split(".")[0]
        while name in names:
            name += "_"
        names.add(name)
        row["case"] = name
        if not Path(row["path"]).is_absolute():
            row["path"] = str(path.parent / row["path"])
    return rows


def run_batch(table: str | os.PathLike, methods: list[str], out: str | os.PathLike,
              show_progress: bool = True, device: str = "auto",
              options: dict[str, dict] | None = None) -> Path:
    """Run every case into `out/<case>/`, skipping cases already done; write `out/summary.csv`.
    `device` and `options` as for `pipeline.run`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    loaded: dict = {}
    summary = []
    for row in tqdm(read_case_table(table), desc="batch", unit="case",
                    disable=not show_progress):
        folder = out / row["case"]
        entry = {"case": row["case"], "path": row["path"], "status": "ok", "exit_code": 0,
                 "message": ""}
        try:
            reports = _done(folder, methods)
            if reports is None:
                age = float(row["age"]) if row["age"].strip() else None
                reports = run(row["path"], age, row["sex"].strip().upper(), methods, folder,
                              row.get("brain_mask") or None, loaded_methods=loaded,
                              device=device, options=options)
            else:
                entry["status"] = "done before"
            for name, report in reports.items():
                entry[f"{name}_abnormality_index"] = report["abnormality_index"]
                entry[f"{name}_abnormality_index_z"] = report["abnormality_index_z"]
                entry[f"{name}_lesion_count"] = report["lesions"]["count"]
                entry[f"{name}_lesion_volume_ml"] = report["lesions"]["volume_ml"]
        except (NeuroADError, ValueError) as error:
            code = getattr(error, "exit_code", InputError.exit_code)
            entry.update(status="failed", exit_code=code, message=str(error))
        summary.append(entry)
    fields = list(dict.fromkeys(key for entry in summary for key in entry))
    with (out / SUMMARY).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(summary)
    return out / SUMMARY


def _done(folder: Path, methods: list[str]) -> dict | None:
    """The reports of a case already run with these methods, or None."""
    paths = ([folder / "report.json"] if len(methods) == 1
             else [folder / name / "report.json" for name in methods])
    if not all(p.is_file() for p in paths):
        return None
    return {name: json.loads(p.read_text()) for name, p in zip(methods, paths, strict=True)}

"""`neuroad batch`: every case of a table through `pipeline.run`, one failure never stopping
the others, resumable, with one summary table.

The case table is a CSV with columns `path, age, sex` and optionally `brain_mask` and `case`
(an output name, unique; by default the file name without its extension). A table that cannot
be used at all is refused before any case runs; a case with its own problem (a missing age, an
unreadable scan) fails alone.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from tqdm import tqdm

from .errors import (
    EXIT_INTERNAL,
    EXIT_OUT_OF_MEMORY,
    CaseTableError,
    InputError,
    NeuroADError,
)
from .guards import check_options
from .outputs import check_writable
from .pipeline import run

SUMMARY = "summary.csv"
COLUMNS = ("path", "age", "sex")
TABLE_HELP = "a header line path,age,sex[,brain_mask,case] and one line per case"


def read_case_table(path: str | os.PathLike) -> list[dict]:
    """The cases of a table, each with `case` (its output name), `line`, and its path made
    absolute from the table's folder. A table that cannot be used at all (missing, empty, not
    CSV text, lacking columns, repeating a case name, a case name that is not a folder name)
    raises CaseTableError; a row's own problems (a missing age, say) are left for its run, so
    that they fail that case alone."""
    path = Path(path)
    if not path.is_file():
        raise CaseTableError(f"Case table not found: {path}")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [name.strip().lower() for name in reader.fieldnames or []]
            reader.fieldnames = header
            rows = [{**row, "line": reader.line_num} for row in reader]
    except (UnicodeDecodeError, csv.Error) as error:
        raise CaseTableError(f"{path} is not a CSV text table ({error}); save it as CSV "
                             "(UTF-8).") from None
    if not header:
        raise CaseTableError(f"{path} is empty: a case table has {TABLE_HELP}.")
    missing = [column for column in COLUMNS if column not in header]
    if missing:
        raise CaseTableError(f"{path} lacks the column(s) {', '.join(missing)} (its columns: "
                             f"{', '.join(header)}); a case table has {TABLE_HELP}.")
    if not rows:
        raise CaseTableError(f"{path} has no cases, only its header line: add one line per "
                             "case.")
    for row in rows:
        for key in (*COLUMNS, "brain_mask", "case"):
            row[key] = (row.get(key) or "").strip()
    _name_cases(path, rows)
    for row in rows:
        if row["path"] and not Path(row["path"]).is_absolute():
            row["path"] = str(path.parent / row["path"])
    return rows


def _name_cases(table: Path, rows: list[dict]) -> None:
    """Give every row a unique output name: its `case`, else its file name without extension
    (with `_` added while taken). Repeated or unusable given names are refused."""
    given: dict[str, int] = {}
    for row in rows:
        name = row["case"]
        if not name:
            continue
        if name in (".", "..") or any(c in name for c in "/\\:") or name.startswith("."):
            raise CaseTableError(f"{table} line {row['line']}: case name {name!r} is not a "
                                 "plain folder name (no / \\ : and no leading dot).")
        if name in given:
            raise CaseTableError(f"{table}: case name {name!r} is on lines {given[name]} and "
                                 f"{row['line']}; case names must be unique (each names its "
                                 "output folder).")
        given[name] = row["line"]
    names = set(given)
    for row in rows:
        if row["case"]:
            continue
        name = Path(row["path"]).name.split(".")[0] or f"line{row['line']}"
        while name in names:
            name += "_"
        names.add(name)
        row["case"] = name


def run_batch(table: str | os.PathLike, methods: list[str], out: str | os.PathLike,
              show_progress: bool = True, device: str = "auto",
              options: dict[str, dict] | None = None) -> Path:
    """Run every case into `out/<case>/`, skipping cases already done; write `out/summary.csv`.
    `device` and `options` as for `pipeline.run`. The table and options are checked before any
    case runs; a case that fails, for whatever reason, is recorded and the others go on."""
    options = check_options(options)
    rows = read_case_table(table)
    out = check_writable(out)
    out.mkdir(parents=True, exist_ok=True)
    loaded: dict = {}
    summary = []
    for row in tqdm(rows, desc="batch", unit="case", disable=not show_progress):
        folder = out / row["case"]
        entry = {"case": row["case"], "path": row["path"], "status": "ok", "exit_code": 0,
                 "message": ""}
        try:
            reports = _done(folder, methods)
            if reports is None:
                reports = run(_case_path(row), _case_age(row), row["sex"].upper(), methods,
                              folder, row["brain_mask"] or None, loaded_methods=loaded,
                              device=device, options=options)
            else:
                entry["status"] = "done before"
            for name, report in reports.items():
                entry[f"{name}_abnormality_index"] = report["abnormality_index"]
                entry[f"{name}_abnormality_index_z"] = report["abnormality_index_z"]
                entry[f"{name}_lesion_count"] = report["lesions"]["count"]
                entry[f"{name}_lesion_volume_ml"] = report["lesions"]["volume_ml"]
        except NeuroADError as error:
            entry.update(status="failed", exit_code=error.exit_code, message=str(error))
        except MemoryError:
            entry.update(status="failed", exit_code=EXIT_OUT_OF_MEMORY, message="Out of memory.")
        except Exception as error:  # noqa: BLE001 - one case's failure never stops the others
            entry.update(status="failed", exit_code=EXIT_INTERNAL,
                         message=f"internal error: {type(error).__name__}: {error}")
        summary.append(entry)
    fields = list(dict.fromkeys(key for entry in summary for key in entry))
    with (out / SUMMARY).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(summary)
    return out / SUMMARY


def _case_path(row: dict) -> str:
    if not row["path"]:
        raise InputError(f"Line {row['line']} of the case table has no path.")
    return row["path"]


def _case_age(row: dict) -> float | None:
    """The row's age in years; None when blank (the run then says that the age is needed)."""
    if not row["age"]:
        return None
    try:
        return float(row["age"])
    except ValueError:
        raise InputError(f"Age {row['age']!r} on line {row['line']} of the case table is not "
                         "a number of years.") from None


def _done(folder: Path, methods: list[str]) -> dict | None:
    """The reports of a case already run with these methods, or None."""
    paths = ([folder / "report.json"] if len(methods) == 1
             else [folder / name / "report.json" for name in methods])
    if not all(p.is_file() for p in paths):
        return None
    return {name: json.loads(p.read_text()) for name, p in zip(methods, paths, strict=True)}

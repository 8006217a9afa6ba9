"""`neuroad batch`: every case of a table through the pipeline, one failure never stopping the
others, resumable, with one summary table; on this machine one case after another, or on a Dask
cluster (see `cluster`), or one shard of the table (`--shard I/N`, joined by `merge_shards`).

The case table is a CSV with columns `path, age, sex` and optionally `brain_mask` and `case`
(an output name, unique; by default the file name without its extension). For a longitudinal
method, a `subject` column groups rows into one patient's visits (in table order, which must
be scan order): each patient runs as one unit into `out/<subject>/visitK/`, and the summary
has a row per visit. A table that cannot
be used at all is refused before any case runs; a case with its own problem (a missing age, an
unreadable scan) fails alone.

A case is done when its `report.json` (one per method) is in `out/<case>/`: outputs appear
there whole, assembled in `out/.staging/` and renamed into place. Only the process that runs
the batch writes `summary.csv`, atomically (a temporary file renamed over it), after finished
cases, so that an interrupted batch resumes with the cases still to do.
"""

from __future__ import annotations

import csv
import json
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from .errors import (
    EXIT_INTERNAL,
    EXIT_OUT_OF_MEMORY,
    CaseTableError,
    InputError,
    NeuroADError,
    UsageError,
)
from .options import check_options
from .outputs import check_writable, remove_stale_staging

SUMMARY = "summary.csv"
STAGING = ".staging"
COLUMNS = ("path", "age", "sex")
TABLE_HELP = "a header line path,age,sex[,brain_mask,case] and one line per case"
SUMMARY_INTERVAL_S = 1.0  # at most one rewrite of summary.csv a second (and one at the end)

EventCallback = Callable[[dict], None]


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
        for key in (*COLUMNS, "brain_mask", "case", "subject"):
            row[key] = (row.get(key) or "").strip()
    _name_cases(path, rows)
    for row in rows:
        if row["path"] and not Path(row["path"]).is_absolute():
            row["path"] = str(path.parent / row["path"])
    return rows


def _plain_name(name: str) -> bool:
    """Whether `name` can name an output folder: no / \\ :, not . or .., no leading dot."""
    return not (name in (".", "..") or any(c in name for c in "/\\:") or name.startswith("."))


def _name_cases(table: Path, rows: list[dict]) -> None:
    """Give every row a unique output name: its `case`, else its file name without extension
    (with `_` added while taken). Repeated or unusable given names are refused."""
    given: dict[str, int] = {}
    for row in rows:
        name = row["case"]
        if not name:
            continue
        if not _plain_name(name):
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


# --- one case -------------------------------------------------------------------------------

def case_age(row: dict) -> float | None:
    """The row's age in years; None when blank (the run then says that the age is needed)."""
    if not row["age"]:
        return None
    try:
        return float(row["age"])
    except ValueError:
        raise InputError(f"Age {row['age']!r} on line {row['line']} of the case table is not "
                         "a number of years.") from None


def case_path(row: dict) -> str:
    if not row["path"]:
        raise InputError(f"Line {row['line']} of the case table has no path.")
    return row["path"]


def done_reports(folder: Path, methods: list[str]) -> dict | None:
    """The reports of a case already run with these methods, or None: a case is done when
    every method's report.json is there, readable and names that method."""
    paths = ([folder / "report.json"] if len(methods) == 1
             else [folder / name / "report.json" for name in methods])
    reports = {}
    for name, path in zip(methods, paths, strict=True):
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(report, dict) or report.get("method") != name:
            return None
        reports[name] = report
    return reports


def case_entry(row: dict, reports: dict[str, dict], status: str = "ok") -> dict:
    """A summary row for a finished case: its figures per method."""
    entry = {"case": row["case"], "path": row["path"], "status": status, "exit_code": 0,
             "message": ""}
    for name, report in reports.items():
        entry[f"{name}_abnormality_index"] = report["abnormality_index"]
        entry[f"{name}_abnormality_index_z"] = report["abnormality_index_z"]
        entry[f"{name}_lesion_count"] = report["lesions"]["count"]
        entry[f"{name}_lesion_volume_ml"] = report["lesions"]["volume_ml"]
    return entry


def failed_entry(row: dict, error: BaseException | None = None, exit_code: int = EXIT_INTERNAL,
                 message: str = "") -> dict:
    """A summary row for a failed case, from the error that stopped it."""
    if isinstance(error, NeuroADError):
        exit_code, message = error.exit_code, str(error)
    elif isinstance(error, MemoryError):
        exit_code, message = EXIT_OUT_OF_MEMORY, "Out of memory."
    elif error is not None:
        message = f"internal error: {type(error).__name__}: {error}"
    return {"case": row["case"], "path": row["path"], "status": "failed",
            "exit_code": exit_code, "message": message}


def run_case(row: dict, methods: list[str], out: Path, loaded: dict, device: str = "auto",
             options: dict | None = None) -> dict:
    """One case on this machine into `out/<case>/`; its summary row, whatever happens."""
    from .pipeline import run

    try:
        reports = run(case_path(row), case_age(row), row["sex"].upper(), methods,
                      out / row["case"], row["brain_mask"] or None, loaded_methods=loaded,
                      device=device, options=options, staging_dir=out / STAGING)
    except Exception as error:  # noqa: BLE001 - one case's failure never stops the others
        return failed_entry(row, error)
    return case_entry(row, reports)


def patients(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """Rows grouped into patients by their `subject` (a row without one is a patient of its
    own, named by its case), in table order; each patient's name names its output folder."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        name = row["subject"] or row["case"]
        if not _plain_name(name):
            raise CaseTableError(f"Line {row['line']}: subject {name!r} is not a plain folder "
                                 "name (no / \\ : and no leading dot).")
        groups.setdefault(name, []).append(row)
    return list(groups.items())


def done_visits(folder: Path, method: str, count: int) -> list[dict] | None:
    """The visit reports of a patient already run, or None."""
    reports = [done_reports(folder / f"visit{k}", [method]) for k in range(1, count + 1)]
    return None if any(r is None for r in reports) else [r[method] for r in reports]


def run_patient(name: str, rows: list[dict], method: str, out: Path, loaded: dict,
                device: str = "auto", options: dict | None = None) -> list[dict]:
    """One patient's visits through a longitudinal method into `out/<name>/`; a summary row
    per visit, whatever happens (all failed together: the visits are read together)."""
    from .longitudinal import run_visits

    try:
        sexes = {row["sex"].upper() for row in rows}
        if len(sexes) > 1:
            raise InputError(f"Patient {name}'s visits give different sexes {sorted(sexes)}.")
        reports = run_visits([case_path(row) for row in rows], [case_age(row) for row in rows],
                             sexes.pop(), out / name, method,
                             [row["brain_mask"] or None for row in rows], device=device,
                             options=(options or {}).get(method),
                             staging_dir=out / STAGING, loaded_methods=loaded)
    except Exception as error:  # noqa: BLE001 - one patient's failure never stops the others
        return [failed_entry(row, error) for row in rows]
    return [case_entry(row, {method: report}) for row, report in zip(rows, reports,
                                                                      strict=True)]


# --- the batch ------------------------------------------------------------------------------

@dataclass
class Summary:
    """summary.csv: one row per finished case in table order, rewritten atomically (a temporary
    file renamed over it) at most every `interval_s` seconds and by `write(final=True)`."""

    path: Path
    order: dict[str, int]
    interval_s: float = SUMMARY_INTERVAL_S
    entries: dict[str, dict] = field(default_factory=dict)
    _written: float = field(default=0.0, repr=False)

    def add(self, entry: dict) -> None:
        self.entries[entry["case"]] = entry
        self.write()

    def write(self, final: bool = False) -> None:
        if not final and time.monotonic() - self._written < self.interval_s:
            return
        write_summary(self.path, sorted(self.entries.values(),
                                        key=lambda entry: self.order[entry["case"]]))
        self._written = time.monotonic()


def write_summary(path: Path, entries: list[dict]) -> None:
    """A summary table written whole: into a temporary file beside it, renamed over it."""
    fields = list(dict.fromkeys(key for entry in entries for key in entry))
    handle = tempfile.NamedTemporaryFile("w", newline="", dir=path.parent, delete=False,
                                         prefix=f".{path.name}.", suffix=".tmp")
    try:
        with handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(entries)
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


@dataclass
class BatchProgress:
    """Cases done / failed / running of the total, throughput of this run and an ETA, as a
    terminal bar and as `{"event": "batch", ...}` events (the Slicer console's)."""

    total: int
    emit: EventCallback | None = None
    show_bar: bool = True
    done: int = 0
    failed: int = 0
    running: int = 0
    finished_here: int = 0
    started: float = field(default_factory=time.monotonic)
    _bar: tqdm | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._bar = tqdm(total=self.total, desc="batch", unit="case", disable=not self.show_bar)

    def finished(self, entry: dict, ran_here: bool = True) -> None:
        if entry["status"] == "failed":
            self.failed += 1
        else:
            self.done += 1
        self.finished_here += ran_here
        self._bar.update(1)
        self.report(entry)

    @property
    def cases_per_min(self) -> float | None:
        """Throughput of the cases run by this batch (not those done before)."""
        elapsed = time.monotonic() - self.started
        return self.finished_here / elapsed * 60 if self.finished_here and elapsed > 0 else None

    def report(self, entry: dict | None = None) -> dict:
        rate = self.cases_per_min
        left = self.total - self.done - self.failed
        event = {"event": "batch", "total": self.total, "done": self.done,
                 "failed": self.failed, "running": self.running,
                 "cases_per_min": None if rate is None else round(rate, 2),
                 "eta_s": None if rate is None else round(left / rate * 60, 1)}
        self._bar.set_postfix(failed=self.failed, running=self.running, refresh=False)
        if self.emit is not None:
            if entry is not None:
                self.emit({"event": "case", **{k: entry[k] for k in
                                               ("case", "status", "exit_code", "message")}})
            self.emit(event)
        return event

    def close(self) -> None:
        self._bar.close()


def parse_shard(text: str) -> tuple[int, int]:
    """`I/N` -> (I, N): shard I (0 ... N-1) of N, as a SLURM array task id of --array=0-(N-1)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise UsageError(f"--shard {text!r} must be I/N with 0 <= I < N, e.g. 0/4 for the "
                         "first of four shards (SLURM: --array=0-3, "
                         "--shard $SLURM_ARRAY_TASK_ID/4).")
    return int(match[1]), int(match[2])


def shard_summary_name(shard: tuple[int, int]) -> str:
    return f"summary.shard-{shard[0]}-of-{shard[1]}.csv"


def run_batch(table: str | os.PathLike, methods: list[str], out: str | os.PathLike,
              show_progress: bool = True, device: str = "auto",
              options: dict[str, dict] | None = None, cluster=None,
              cluster_config: str | os.PathLike | None = None, shard: str | None = None,
              on_event: EventCallback | None = None, threads: int | None = None) -> Path:
    """Run every case (of shard `I/N` when given) into `out/<case>/`, skipping cases already
    done; returns the summary table (`out/summary.csv`, or the shard's own). Without `cluster`
    the cases run here one after another; with it (`local:N`, a scheduler address or file,
    `slurm` with `cluster_config`, or a `distributed.Client`) on a Dask cluster. `device` and
    `options` as for `pipeline.run`; `threads` per case (cluster workers: the cores over the
    workers). The table and options are checked before any case runs; a case that fails, for
    whatever reason, is recorded and the others go on."""
    from .methods.registry import LONGITUDINAL_METHODS

    options = check_options(options)
    rows = read_case_table(table)
    longitudinal = [m for m in methods if m in LONGITUDINAL_METHODS]
    if longitudinal and (len(methods) > 1 or cluster is not None):
        raise UsageError(f"{longitudinal[0]} reads each patient's visits together: run it "
                         "alone (one --method), on this machine (no --cluster).")
    summary_name = SUMMARY
    if shard is not None:
        index, count = parse_shard(shard)
        if longitudinal:  # a patient's visits stay in one shard
            rows = [row for _, group in patients(rows)[index::count] for row in group]
        else:
            rows = rows[index::count]
        summary_name = shard_summary_name((index, count))
    out = check_writable(out)
    if longitudinal:
        progress = BatchProgress(len(rows), on_event, show_progress)
        return _run_patients(rows, longitudinal[0], out, summary_name, progress, device,
                             options)
    if cluster is None:
        progress = BatchProgress(len(rows), on_event, show_progress)
        return _run_cases(rows, methods, out, summary_name, progress, device, options)
    from .cluster import connect

    connection = connect(cluster, cluster_config, threads, device)  # before any output
    try:
        progress = BatchProgress(len(rows), on_event, show_progress)
        return _run_cases(rows, methods, out, summary_name, progress, device, options,
                          connection)
    finally:
        connection.close()


def _run_cases(rows: list[dict], methods: list[str], out: Path, summary_name: str,
               progress: BatchProgress, device: str, options: dict,
               connection=None) -> Path:
    """The cases not done yet, here or on the cluster `connection`; returns the summary."""
    out.mkdir(parents=True, exist_ok=True)
    summary = Summary(out / summary_name, {row["case"]: i for i, row in enumerate(rows)})
    to_run = []
    for row in rows:
        reports = done_reports(out / row["case"], methods)
        if reports is None:
            to_run.append(row)
        else:
            summary.entries[row["case"]] = case_entry(row, reports, "done before")
            progress.finished(summary.entries[row["case"]], ran_here=False)
    try:
        if connection is None:
            loaded: dict = {}
            for row in to_run:
                progress.running = 1
                entry = run_case(row, methods, out, loaded, device, options)
                progress.running = 0
                summary.add(entry)
                progress.finished(entry)
        else:
            from .cluster import run_on_cluster

            start = time.monotonic()
            workers = run_on_cluster(connection, to_run, methods, out, summary, progress,
                                     device, options)
            _write_json(out / summary_name.replace("summary", "cluster").replace(".csv",
                                                                                 ".json"),
                        {"cluster": connection.spec, "cases_run": len(to_run),
                         "wall_s": round(time.monotonic() - start, 1),
                         "cases_per_min": round(progress.cases_per_min or 0.0, 2),
                         "workers": workers})
    finally:
        summary.write(final=True)
        progress.close()
    staging = out / STAGING
    for row in to_run:
        remove_stale_staging(out / row["case"], staging, any_host=connection is not None)
    if staging.is_dir() and not any(staging.iterdir()):
        staging.rmdir()
    return summary.path


def _run_patients(rows: list[dict], method: str, out: Path, summary_name: str,
                  progress: BatchProgress, device: str, options: dict) -> Path:
    """The patients not done yet, one after another; returns the summary (a row per visit)."""
    out.mkdir(parents=True, exist_ok=True)
    summary = Summary(out / summary_name, {row["case"]: i for i, row in enumerate(rows)})
    loaded: dict = {}
    try:
        for name, group in patients(rows):
            reports = done_visits(out / name, method, len(group))
            if reports is not None:
                entries = [case_entry(row, {method: r}, "done before")
                           for row, r in zip(group, reports, strict=True)]
            else:
                progress.running = 1
                entries = run_patient(name, group, method, out, loaded, device, options)
                progress.running = 0
            for entry in entries:
                summary.add(entry)
                progress.finished(entry, ran_here=reports is None)
    finally:
        summary.write(final=True)
        progress.close()
    staging = out / STAGING
    if staging.is_dir() and not any(staging.iterdir()):
        staging.rmdir()
    return summary.path


def _write_json(path: Path, value: dict) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(json.dumps(value, indent=2, default=float))
    os.replace(staging, path)


def merge_shards(table: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Join the shard summaries in `out` (`summary.shard-I-of-N.csv`, all N of them, made from
    `table`) into `out/summary.csv`: every case of the table once, in the table's order. A
    shard missing, or a case in none of them (a shard interrupted), is refused by name."""
    rows, out = read_case_table(table), Path(out)
    found: dict[int, set[int]] = {}
    for path in out.glob("summary.shard-*-of-*.csv"):
        match = re.fullmatch(r"summary\.shard-(\d+)-of-(\d+)\.csv", path.name)
        if match:
            found.setdefault(int(match[2]), set()).add(int(match[1]))
    if not found:
        raise UsageError(f"No shard summaries (summary.shard-I-of-N.csv) in {out}: run "
                         "`neuroad batch TABLE --shard I/N --out` into it first.")
    if len(found) > 1:
        raise UsageError(f"{out} holds shard summaries of different shard counts "
                         f"({', '.join(str(n) for n in sorted(found))}): keep one batch's.")
    (count, shards), = found.items()
    missing = sorted(set(range(count)) - shards)
    if missing:
        raise UsageError(f"Shard(s) {', '.join(str(i) for i in missing)} of {count} have no "
                         f"summary in {out}: run them (--shard I/{count}) before merging.")
    entries: dict[str, dict] = {}
    for index in range(count):
        with (out / shard_summary_name((index, count))).open(newline="") as handle:
            entries.update((entry["case"], entry) for entry in csv.DictReader(handle))
    unfinished = [(i % count, row["case"]) for i, row in enumerate(rows)
                  if row["case"] not in entries]
    if unfinished:
        shards_left = sorted({shard for shard, _ in unfinished})
        raise UsageError(f"{len(unfinished)} case(s) of {table} are in no shard summary "
                         f"(first: {unfinished[0][1]}): run shard(s) "
                         f"{', '.join(str(i) for i in shards_left)} of {count} again to "
                         "finish them, then merge.")
    path = out / SUMMARY
    write_summary(path, [entries[row["case"]] for row in rows])
    return path

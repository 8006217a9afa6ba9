"""Runs of the engine from Slicer: a worker request made from scene nodes, its progress and
cancellation, its outputs as nodes; blocking use from scripts; batches over files, one case
after another in one worker or on a Dask cluster (`neuroad batch --cluster`).

A run object has `start()`, `poll()` (new worker events; drives the run forward), `cancel()`
(cooperative: the worker's stop file, then a kill of its process tree after a grace period),
`abort()` (kill now), and `finished`, `state`, `progress`, `error`. The GUI polls from a
timer, scripts through `runToCompletion`, so neither needs threads.
"""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from .mrml import writeMaskFile, writeVolumeFile
from .results import ResultNodes, loadConsensus, loadMethodResult, loadResults
from .worker import WORKER_MODULE, WorkerProcess, WorkerSettings

STOP_FILE = "stop"
SUMMARY = "summary.csv"
ENGINE_CLI = "NeuroADLib"  # `python -m NeuroADLib`: the neuroad command
CASE_FIELDS = ("case", "status", "exit_code", "message")


class RunState(Enum):
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


ENDED = (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED)


@dataclass
class RunProgress:
    """What the progress bar shows: the current stage, the fraction done, and the time left
    (for the whole run, or for the current step when `etaOfStep`: the worker reports
    sub-steps of long steps, such as diffusion sampling, with that step's own ETA)."""

    stage: str = "starting"
    fraction: float = 0.0
    etaSeconds: float | None = None
    etaOfStep: bool = False

    @classmethod
    def fromEvent(cls, event: dict) -> RunProgress:
        """From a worker progress event: `step` of `total` counts a step when it starts."""
        substeps = event.get("substeps")
        done = event["step"] - 1 + (event["substep"] / substeps if substeps else 0.0)
        stage = event["stage"] + (f" ({event['substep']}/{substeps})" if substeps else "")
        return cls(stage, done / max(event["total"], 1), event.get("eta_s"), bool(substeps))

    @classmethod
    def fromBatchEvent(cls, event: dict) -> RunProgress:
        """From a `batch` event of `neuroad batch --events`: the cases finished of the total."""
        finished, total = event["done"] + event["failed"], max(event["total"], 1)
        return cls(f"{finished}/{event['total']} cases, {event['failed']} failed, "
                   f"{event['running']} running", finished / total, event.get("eta_s"))

    def text(self) -> str:
        if self.etaSeconds is None:
            return self.stage
        scope = " for this step" if self.etaOfStep else ""
        return f"{self.stage}: about {_duration(self.etaSeconds)} left{scope}"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


class RunError(RuntimeError):
    """A run that failed or was cancelled. `code` is the worker's exit code (see the README's
    table), `kind` the engine's error type, `details` the end of the worker's stderr."""

    def __init__(self, message: str, code: int, kind: str = "", details: str = ""):
        super().__init__(message)
        self.code = code
        self.kind = kind
        self.details = details


def errorHint(code: int) -> str:
    """What a user can do about an error, by exit code."""
    from NeuroADLib import errors

    return {
        errors.EXIT_BAD_INPUT: "Check that the input is a 3D brain MRI of the method's "
                               "contrast, and the brain mask if one was given.",
        errors.EXIT_MODEL: "Install the method's model: NeuroAD > Models > Import, or "
                           "`neuroad models import FILE` (works offline).",
        errors.EXIT_OUT_OF_MEMORY: "Close other programs, or choose Device: CPU; on a shared "
                                   "GPU pick a free one with CUDA_VISIBLE_DEVICES.",
        errors.EXIT_OUTPUT: "The output folder is not writable: choose another one.",
        errors.EXIT_CLUSTER: "Check the cluster: slicer.util.pip_install(\"dask[distributed] "
                             "dask-jobqueue\") once, and that its scheduler is running.",
        errors.EXIT_INTERNAL: "This is a bug: please report it with the log.",
    }.get(code, "")


def buildRequest(inputPath: Path, age: float | None, sex: str, methods: Sequence[str],
                 out: Path, brainMask: Path | None = None, device: str = "auto",
                 options: dict | None = None, requestId: str = "") -> dict:
    """A worker request (see NeuroADLib.worker)."""
    return {"input": str(inputPath), "age": None if age is None else float(age), "sex": sex,
            "methods": list(methods), "out": str(out),
            "brain_mask": str(brainMask) if brainMask else None, "device": device,
            "options": options or {}, "id": requestId}


def buildVisitsRequest(inputPaths: Sequence[Path], ages: Sequence[float], sex: str,
                       method: str, out: Path, device: str = "auto",
                       options: dict | None = None, requestId: str = "") -> dict:
    """A worker request for a longitudinal method: a patient's visits in scan order."""
    return {"visits": [{"input": str(path), "age": float(age)}
                       for path, age in zip(inputPaths, ages, strict=True)],
            "sex": sex, "methods": [method], "out": str(out), "device": device,
            "options": options or {}, "id": requestId}


def removeStaging(out: Path) -> None:
    """Remove the hidden staging folders (`.OUT.partial-*`) a killed worker leaves beside its
    output folder (a worker that stops on its own removes them itself)."""
    out = Path(out)
    if out.parent.is_dir():
        for staging in out.parent.glob(f".{out.name}.partial-*"):
            shutil.rmtree(staging, ignore_errors=True)


class WorkerRun:
    """One request through a worker process: its events become progress, log and the result
    or error; cancel asks the worker to stop, and kills its process tree after the grace."""

    def __init__(self, request: dict, folder: Path, settings: WorkerSettings):
        self.folder = Path(folder)
        self.request = {**request, "stop_file": str(self.folder / STOP_FILE)}
        self.settings = settings
        self.state = RunState.RUNNING
        self.progress = RunProgress()
        self.log: list[str] = []
        self.result: dict | None = None
        self.error: RunError | None = None
        self.process: WorkerProcess | None = None
        self._cancelAt: float | None = None

    @property
    def finished(self) -> bool:
        return self.state in ENDED

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        requestPath = self.folder / "request.json"
        requestPath.write_text(json.dumps(self.request))
        self.process = WorkerProcess(self.settings.command(WORKER_MODULE, str(requestPath)),
                                     self.folder / "worker", self.settings.env(
                                         self.request.get("device", "auto")))
        self.process.start()

    def poll(self) -> list[dict]:
        if self.finished:
            return []
        exitCode = self.process.returncode  # before reading: then the read sees every event
        events = self.process.poll()
        for event in events:
            self._apply(event)
        if exitCode is not None:
            self._end(exitCode)
        elif self._cancelAt is not None and time.monotonic() >= self._cancelAt:
            self.abort()
        return events

    def cancel(self) -> None:
        """Ask the worker to stop at its next step; it is killed if still running after the
        grace period."""
        if not self.finished and self._cancelAt is None:
            (self.folder / STOP_FILE).write_text("stop")
            self._cancelAt = time.monotonic() + self.settings.cancelGraceSeconds
            self.state = RunState.CANCELLING
            self.progress.stage = "cancelling"

    def abort(self) -> None:
        """Kill the worker and its children now."""
        if not self.finished:
            self.process.kill()
            self._cancelAt = self._cancelAt or time.monotonic()
            self._end(self.process.returncode)

    def _apply(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "stage":
            self.progress.stage = event["stage"]
        elif kind == "progress":
            self.progress = RunProgress.fromEvent(event)
        elif kind == "log":
            self.log.append(event["message"])
        elif kind == "result":
            self.result = event
        elif kind == "error":
            self.log.append(f"{event['type']}: {event['message']}")
            self.error = RunError(event["message"], event["code"], event["type"])

    def _end(self, exitCode: int) -> None:
        if exitCode == 0 and self.result is not None:
            self.state = RunState.SUCCEEDED
            self.progress = RunProgress("done", 1.0)
            return
        removeStaging(Path(self.request["out"]))
        details = self.process.stderrTail()
        if self._cancelAt is not None:
            self.state = RunState.CANCELLED
            self.error = RunError("Cancelled.", exitCode, "Cancelled", details)
            return
        self.state = RunState.FAILED
        if self.error is None:
            self.error = RunError(f"The worker stopped unexpectedly (exit code {exitCode}).",
                                  exitCode, "WorkerStopped", details)
        self.error.details = details


class SceneRun:
    """A run from scene nodes to result nodes: the input (and brain mask) are written to a
    temporary folder, the worker runs on them, and its outputs come back as nodes beside the
    input. The temporary folder is removed when the run ends, whatever the outcome."""

    def __init__(self, inputVolume, age: float, sex: str, methods: Sequence[str],
                 brainMask=None, device: str = "auto", options: dict | None = None,
                 settings: WorkerSettings | None = None, tempRoot: Path | None = None):
        self.inputVolume = inputVolume
        self.age = age
        self.sex = sex
        self.methods = list(methods)
        self.brainMask = brainMask
        self.device = device
        self.options = options
        self.settings = settings or WorkerSettings()
        self._tempRoot = tempRoot
        self.folder: Path | None = None
        self.run: WorkerRun | None = None
        self.results: dict[str, ResultNodes] = {}
        self.consensus = None  # the consensus volume node when several methods ran
        self._closed = False

    def start(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="NeuroAD-", dir=self._tempRoot))
        try:
            self.run = WorkerRun(self._request(), self.folder, self.settings)
            self.run.start()
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise

    def _request(self) -> dict:
        """The input (and brain mask) written into the run's folder, and the request."""
        inputPath = writeVolumeFile(self.inputVolume, self.folder / "input.nrrd")
        maskPath = (None if self.brainMask is None else
                    writeMaskFile(self.brainMask, self.inputVolume, self.folder / "mask.nrrd"))
        return buildRequest(inputPath, self.age, self.sex, self.methods, self.folder / "out",
                            maskPath, self.device, self.options, self.inputVolume.GetName())

    @property
    def state(self) -> RunState:
        return self.run.state

    @property
    def progress(self) -> RunProgress:
        return self.run.progress

    @property
    def error(self) -> RunError | None:
        return self.run.error

    @property
    def finished(self) -> bool:
        return self._closed

    def poll(self) -> list[dict]:
        events = self.run.poll()
        if self.run.finished and not self._closed:
            try:
                if self.run.state is RunState.SUCCEEDED:
                    self._load()
                elif self.run.error is not None:
                    self.run.error = self._byNodeName(self.run.error)
            finally:
                self._close()
        return events

    def _byNodeName(self, error: RunError) -> RunError:
        """The error with the temporary files it names replaced by the nodes they hold."""
        message = str(error)
        for fileName, node in (("input.nrrd", self.inputVolume), ("mask.nrrd", self.brainMask)):
            if node is not None:
                message = message.replace(str(self.folder / fileName), repr(node.GetName()))
        return RunError(message, error.code, error.kind, error.details)

    def cancel(self) -> None:
        self.run.cancel()

    def abort(self) -> None:
        self.run.abort()
        self._close()

    def _close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self._closed = True

    def _load(self) -> None:
        try:
            self.results = loadResults(self.inputVolume, self.folder / "out", self.methods)
            self.consensus = loadConsensus(self.inputVolume, self.folder / "out")
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            self.run.state = RunState.FAILED
            self.run.error = RunError(f"The outputs could not be loaded: {error}", 1,
                                      type(error).__name__)


class VisitsSceneRun(SceneRun):
    """A longitudinal run from a patient's visit volumes (in scan order, each with the age at
    that scan) to one ResultNodes per visit, each beside its own volume (`visitResults`)."""

    def __init__(self, volumes: Sequence, ages: Sequence[float], sex: str, method: str,
                 device: str = "auto", options: dict | None = None,
                 settings: WorkerSettings | None = None, tempRoot: Path | None = None):
        if not volumes or len(volumes) != len(ages):
            raise ValueError(f"{len(volumes)} visit volumes and {len(ages)} ages: give one "
                             "age per visit, in scan order.")
        super().__init__(volumes[0], ages[0], sex, [method], None, device, options, settings,
                         tempRoot)
        self.volumes, self.ages = list(volumes), [float(age) for age in ages]
        self.visitResults: list[ResultNodes] = []

    def _request(self) -> dict:
        paths = [writeVolumeFile(volume, self.folder / f"visit{k}.nrrd")
                 for k, volume in enumerate(self.volumes, start=1)]
        return buildVisitsRequest(paths, self.ages, self.sex, self.methods[0],
                                  self.folder / "out", self.device, self.options,
                                  self.inputVolume.GetName())

    def _byNodeName(self, error: RunError) -> RunError:
        message = str(error)
        for k, volume in enumerate(self.volumes, start=1):
            message = message.replace(str(self.folder / f"visit{k}.nrrd"), repr(volume.GetName()))
        return RunError(message, error.code, error.kind, error.details)

    def _load(self) -> None:
        try:
            self.visitResults = [loadMethodResult(volume, self.folder / "out" / f"visit{k}")
                                 for k, volume in enumerate(self.volumes, start=1)]
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            self.run.state = RunState.FAILED
            self.run.error = RunError(f"The outputs could not be loaded: {error}", 1,
                                      type(error).__name__)


def runToCompletion(run, idle: Callable[[], None] | None = None,
                    onEvent: Callable[[dict], None] | None = None,
                    interval: float = 0.1) -> None:
    """Start a run and drive it to its end (blocking), calling `idle` between polls (Slicer
    passes its event processing, so its window stays live). Raises RunError unless the run
    succeeded; an exception on the way (e.g. Ctrl-C) kills the worker."""
    run.start()
    try:
        while True:
            for event in run.poll():
                if onEvent is not None:
                    onEvent(event)
            if run.finished:
                break
            if idle is not None:
                idle()
            time.sleep(interval)
    except BaseException:
        run.abort()
        raise
    if run.state is not RunState.SUCCEEDED:
        raise run.error


def readCases(cases: str | Path | Sequence[dict]) -> list[dict]:
    """Case rows (path, age, sex, optional brain_mask and case) from a CSV table as `neuroad
    batch` reads it, or from dicts with the same keys. Relative paths are taken from the
    table's folder; a case's name defaults to its file name without extension, made unique."""
    if isinstance(cases, str | Path):
        table = Path(cases)
        with table.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        base = table.parent
    else:
        rows, base = [dict(row) for row in cases], Path.cwd()
    if not rows:
        raise ValueError(f"{cases} has no cases: add one line per case (path, age, sex).")
    given = [str(row.get("case") or "").strip() for row in rows]
    repeated = sorted({name for name in given if name and given.count(name) > 1})
    if repeated:
        raise ValueError(f"Case name(s) {', '.join(repeated)} appear more than once; case "
                         "names must be unique (each names its output folder).")
    names = {name for name in given if name}
    for row, name in zip(rows, given, strict=True):
        missing = {"path", "age", "sex"} - set(row)
        if missing:
            raise ValueError(f"A case lacks {', '.join(sorted(missing))}: {row}")
        path = str(row["path"] or "").strip()  # a short CSV row has None: the worker says so
        row["path"] = str(base / path) if path else ""
        row["age"] = _age(row["age"], row["path"])
        row["sex"] = str(row["sex"] or "").strip().upper()
        if not name:
            name = Path(path).name.split(".")[0] or "case"
            while name in names:
                name += "_"
            names.add(name)
        row["case"] = name
    return rows


def _age(value, path: str) -> float | None:
    """A case's age in years; None when blank (the worker then reports the missing age)."""
    if value is None or not str(value).strip():
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"Age {value!r} of {path} is not a number of years.") from None


class BatchRun:
    """Cases from files through one persistent worker (models stay loaded), each into
    `out/<case>/`; a failing case never stops the others, cases already done are skipped, and
    `out/summary.csv` gets one row per case (the same columns as `neuroad batch`)."""

    def __init__(self, cases: str | Path | Sequence[dict], methods: Sequence[str],
                 out: str | Path, device: str = "auto", options: dict | None = None,
                 settings: WorkerSettings | None = None):
        self.cases = cases
        self.methods = list(methods)
        self.out = Path(out)
        self.device = device
        self.options = options or {}
        self.settings = settings or WorkerSettings()
        self.state = RunState.RUNNING
        self.progress = RunProgress()
        self.error: RunError | None = None
        self.summary: list[dict] = []
        self._pending: list[dict] = []
        self._current: dict | None = None
        self._caseFraction = 0.0
        self._total = 0
        self._cancelAt: float | None = None
        self.folder: Path | None = None
        self.process: WorkerProcess | None = None

    @property
    def summaryPath(self) -> Path:
        return self.out / SUMMARY

    @property
    def finished(self) -> bool:
        return self.state in ENDED

    def start(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        rows = readCases(self.cases)
        self._total = len(rows)
        for row in rows:
            reports = self._reportsOf(row["case"])
            if reports is None:
                self._pending.append(row)
            else:
                self._record(row, "done before", 0, "", reports)
        if not self._pending:
            self._writeSummary()
            self.state = RunState.SUCCEEDED
            self.progress = RunProgress("done", 1.0)
            return
        self.folder = Path(tempfile.mkdtemp(prefix="NeuroAD-batch-"))
        self.process = WorkerProcess(self.settings.command(WORKER_MODULE, "--persistent"),
                                     self.folder, self.settings.env(self.device))
        self.process.start(withInput=True)
        self._sendNext()

    def poll(self) -> list[dict]:
        if self.finished:
            return []
        exitCode = self.process.returncode
        events = self.process.poll()
        for event in events:
            self._apply(event)
        if exitCode is not None:
            self._end()
        elif self._cancelAt is not None and time.monotonic() >= self._cancelAt:
            self.abort()
        return events

    def cancel(self) -> None:
        if not self.finished and self._cancelAt is None:
            (self.folder / STOP_FILE).write_text("stop")
            self._pending.clear()
            self.process.closeInput()
            self._cancelAt = time.monotonic() + self.settings.cancelGraceSeconds
            self.state = RunState.CANCELLING

    def abort(self) -> None:
        if not self.finished:
            self._pending.clear()
            self._cancelAt = self._cancelAt or time.monotonic()
            self.process.kill()
            self._end()

    def _sendNext(self) -> None:
        self._current = self._pending.pop(0) if self._pending else None
        self._caseFraction = 0.0
        if self._current is None:
            self.process.closeInput()
            return
        row = self._current
        request = buildRequest(Path(row["path"]), row["age"], row["sex"], self.methods,
                               self.out / row["case"], row.get("brain_mask") or None,
                               self.device, self.options, row["case"])
        try:
            self.process.send({**request, "stop_file": str(self.folder / STOP_FILE)})
        except BrokenPipeError:
            return  # the worker died: poll() sees its exit and records this case as failed
        self._showProgress(row["case"])

    def _apply(self, event: dict) -> None:
        row = self._current
        if row is None or event.get("id") != row["case"]:
            return
        kind = event.get("event")
        if kind == "progress":
            caseProgress = RunProgress.fromEvent(event)
            self._caseFraction = caseProgress.fraction
            self._showProgress(f"{row['case']}: {caseProgress.stage}")
        elif kind == "result":
            self._record(row, "ok", 0, "", {name: report for name, report
                                             in event["reports"].items()})
            self._sendNext()
        elif kind == "error":
            self._record(row, "failed", event["code"], event["message"], {})
            self._sendNext()

    def _showProgress(self, stage: str) -> None:
        done = len(self.summary)
        self.progress = RunProgress(f"case {min(done + 1, self._total)} of {self._total}, "
                                    f"{stage}", (done + self._caseFraction) / max(self._total, 1))

    def _record(self, row: dict, status: str, code: int, message: str,
                reports: dict[str, dict]) -> None:
        entry = {"case": row["case"], "path": row["path"], "status": status, "exit_code": code,
                 "message": message}
        for name, report in reports.items():
            entry[f"{name}_abnormality_index"] = report["abnormality_index"]
            entry[f"{name}_abnormality_index_z"] = report["abnormality_index_z"]
            entry[f"{name}_lesion_count"] = report["lesions"]["count"]
            entry[f"{name}_lesion_volume_ml"] = report["lesions"]["volume_ml"]
        self.summary.append(entry)

    def _reportsOf(self, case: str) -> dict[str, dict] | None:
        """The reports of a case already run with these methods, or None."""
        folder = self.out / case
        paths = {name: folder / name / "report.json" if len(self.methods) > 1
                 else folder / "report.json" for name in self.methods}
        if not all(path.is_file() for path in paths.values()):
            return None
        return {name: json.loads(path.read_text()) for name, path in paths.items()}

    def _end(self) -> None:
        from NeuroADLib.errors import EXIT_CANCELLED, EXIT_INTERNAL

        cancelled = self._cancelAt is not None
        if self._current is not None:
            removeStaging(self.out / self._current["case"])
            if cancelled:
                self._record(self._current, "failed", EXIT_CANCELLED, "Cancelled.", {})
            else:
                self._record(self._current, "failed", EXIT_INTERNAL, "The worker stopped "
                             "unexpectedly: " + self.process.stderrTail(300), {})
        self._writeSummary()
        shutil.rmtree(self.folder, ignore_errors=True)
        self.state = RunState.CANCELLED if cancelled else RunState.SUCCEEDED
        if cancelled:
            self.error = RunError(f"Cancelled; the finished cases are in {self.summaryPath}.",
                                  EXIT_CANCELLED, "Cancelled")
        self.progress = RunProgress("done", 1.0)

    def _writeSummary(self) -> None:
        writeTable(self.summaryPath, self.summary)


def writeTable(path: Path, rows: Sequence[dict]) -> None:
    """Rows as a CSV table, its columns those of every row in order (blank where missing)."""
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with Path(path).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


class ClusterBatchRun(BatchRun):
    """A batch on a Dask cluster: one `neuroad batch --cluster SPEC --events` process (SPEC:
    local:N, tcp://host:8786, scheduler.json, or slurm with `clusterConfig`), whose batch
    events become the progress and whose case events become `summary` rows and `log` lines
    until, at its end, `summary` is out/summary.csv. Exit 0, or 3 without an error line (some
    case failed: its row says why), succeeds; any other end (a refused table exits 3 too) is a
    RunError with the engine's `neuroad: error:` message and exit code.
    `cancel` kills the process tree at once: finished cases stay, and a rerun resumes."""

    def __init__(self, cases: str | Path | Sequence[dict], methods: Sequence[str],
                 out: str | Path, cluster: str, clusterConfig: str | Path | None = None,
                 device: str = "auto", options: dict | None = None,
                 settings: WorkerSettings | None = None):
        super().__init__(cases, methods, out, device, options, settings)
        self.cluster = str(cluster)
        self.clusterConfig = clusterConfig
        self.log: list[str] = []

    def start(self) -> None:
        rows = None if isinstance(self.cases, str | Path) else readCases(self.cases)
        self.folder = Path(tempfile.mkdtemp(prefix="NeuroAD-cluster-"))
        table = Path(self.cases) if rows is None else self.folder / "cases.csv"
        if rows is not None:
            writeTable(table, rows)
        args = [str(table), "--out", str(self.out), "--cluster", self.cluster, "--device",
                self.device, "--events", *(f"--method={name}" for name in self.methods),
                *(f"--option={method}.{name}={json.dumps(value)}"
                  for method, values in self.options.items() for name, value in values.items())]
        if self.clusterConfig is not None:
            args += ["--cluster-config", str(self.clusterConfig)]
        self.process = WorkerProcess(self.settings.command(ENGINE_CLI, "batch", *args),
                                     self.folder, self.settings.env(self.device))
        self.process.start()
        self.progress = RunProgress(f"starting the cluster {self.cluster}")

    def cancel(self) -> None:
        self.abort()

    def _apply(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "batch":
            self.progress = RunProgress.fromBatchEvent(event)
        elif kind == "case":
            self.summary.append({key: event[key] for key in CASE_FIELDS})
            self.log.append(caseLine(event))
        elif kind == "log":
            self.log.append(event["message"])

    def _end(self) -> None:
        from NeuroADLib.errors import EXIT_BAD_INPUT, EXIT_CANCELLED

        code, details = self.process.returncode, self.process.stderrTail()
        shutil.rmtree(self.folder, ignore_errors=True)
        errors = [line.removeprefix("neuroad: ").removeprefix("error: ")
                  for line in details.splitlines() if line.startswith("neuroad: ")]
        if self._cancelAt is not None:
            self.state = RunState.CANCELLED
            self.error = RunError(f"Cancelled; the finished cases are in {self.out}: run the "
                                  "batch again to resume.", EXIT_CANCELLED, "Cancelled", details)
        elif code in (0, EXIT_BAD_INPUT) and not errors:  # 3 and no error: a case failed
            with self.summaryPath.open(newline="") as handle:
                self.summary = [{**row, "exit_code": int(row["exit_code"])}
                                for row in csv.DictReader(handle)]
            self.state = RunState.SUCCEEDED
            self.progress = RunProgress("done", 1.0)
        else:
            self.state = RunState.FAILED
            self.error = RunError(errors[-1] if errors else f"The batch stopped unexpectedly "
                                  f"(exit code {code}).", code, "BatchFailed", details)


def caseLine(event: dict) -> str:
    """A log line for a `case` event of `neuroad batch --events`."""
    message = f": {event['message']}" if event.get("message") else ""
    return f"{event['case']}: {event['status']}{message}"


class RecalibrationRun:
    """A method recalibrated on a site's own healthy controls (a folder with participants.csv
    and the scans, as `neuroad prepare-cohort` reads it), by three engine commands one after
    another in a temporary folder: `prepare-cohort` (the scans to the model grid), `calibrate
    METHOD --split all` (the method's healthy threshold and normative statistics measured
    again on every control, at its bundle's options, or `options` over them) and `models
    import` (the new bundle into the model store, where it serves the method from then on).
    On success `bundle` is the imported bundle's folder. A failing command is a RunError with
    the engine's message and exit code, and nothing is imported; `cancel` kills the running
    command at once. The temporary folder is removed at the end either way."""

    STAGES = ("preparing the controls", "recalibrating", "importing the recalibrated bundle")

    def __init__(self, method: str, controls: str | Path, options: dict | None = None,
                 device: str = "auto", settings: WorkerSettings | None = None):
        self.method = method
        self.controls = Path(controls)
        self.options = options or {}
        self.device = device
        self.settings = settings or WorkerSettings()
        self.state = RunState.RUNNING
        self.progress = RunProgress()
        self.error: RunError | None = None
        self.bundle: Path | None = None
        self.log: list[str] = []
        self.folder: Path | None = None
        self.process: WorkerProcess | None = None
        self._stage = -1

    @property
    def finished(self) -> bool:
        return self.state in ENDED

    def start(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="NeuroAD-recalibration-"))
        self._next()

    def _command(self, stage: int) -> list[str]:
        cohort, bundle = self.folder / "cohort", self.folder / "bundle"
        if stage == 0:
            return ["prepare-cohort", str(self.controls), "--cache", str(cohort)]
        if stage == 1:
            return ["calibrate", self.method, "--cohort", str(cohort), "--split", "all",
                    "--out", str(bundle), "--device", self.device,
                    *(f"--option={self.method}.{name}={json.dumps(value)}"
                      for name, value in self.options.items())]
        return ["models", "import", str(bundle)]

    def _next(self) -> None:
        self._stage += 1
        self.process = WorkerProcess(
            self.settings.command(ENGINE_CLI, *self._command(self._stage)),
            self.folder / f"stage{self._stage}", self.settings.env(self.device))
        self.process.start()
        self.progress = RunProgress(self.STAGES[self._stage], self._stage / len(self.STAGES))

    def poll(self) -> list[dict]:
        if self.finished:
            return []
        exitCode = self.process.returncode
        events = self.process.poll()
        self.log += [event["message"] for event in events if event.get("event") == "log"]
        if exitCode == 0 and self._stage + 1 < len(self.STAGES):
            self._next()
        elif exitCode is not None:
            self._end(exitCode)
        return events

    def cancel(self) -> None:
        self.abort()

    def abort(self) -> None:
        if not self.finished:
            self.process.kill()
            self._end(None)

    def _end(self, exitCode: int | None) -> None:
        from NeuroADLib.errors import EXIT_CANCELLED

        details = self.process.stderrTail()
        imported = [line.removeprefix("imported ") for line in self.log
                    if line.startswith("imported ")]
        shutil.rmtree(self.folder, ignore_errors=True)
        if exitCode is None:
            self.state = RunState.CANCELLED
            self.error = RunError("Cancelled; nothing was imported.", EXIT_CANCELLED,
                                  "Cancelled", details)
        elif exitCode == 0 and imported:
            self.bundle = Path(imported[-1])
            self.state = RunState.SUCCEEDED
            self.progress = RunProgress("done", 1.0)
        else:
            errors = [line.removeprefix("neuroad: ").removeprefix("error: ")
                      for line in details.splitlines() if line.startswith("neuroad: ")]
            self.state = RunState.FAILED
            self.error = RunError(
                f"{self.STAGES[self._stage].capitalize()} failed: "
                + (errors[-1] if errors else f"exit code {exitCode}."),
                exitCode, "RecalibrationFailed", details)

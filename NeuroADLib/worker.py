"""The worker process: `python -m NeuroADLib.worker REQUEST.json` (or `-` for stdin).

The Slicer module, scripts and batch runs talk to NeuroAD through it. A request is one JSON
object:

    {"input": "scan.nii.gz", "age": 54, "sex": "F", "methods": ["zscore"], "out": "results",
     "brain_mask": null, "seed": 0, "device": "auto", "options": {"cadd": {"t_int": 1000}},
     "stop_file": null, "id": "caller tag"}

A longitudinal method takes a patient's visits, in scan order, in place of input and age:

    {"visits": [{"input": "v1.nii.gz", "age": 61.0}, {"input": "v2.nii.gz", "age": 62.5,
     "brain_mask": null}], "sex": "F", "methods": ["longitudinal"], "out": "results"}

and its result's reports are keyed visit1, visit2, ... (the outputs in out/visitK/).

Events go to stdout, one JSON object per line: {"event": "stage", "stage"}, {"event":
"progress", "stage", "step", "total", "eta_s", "peak_memory_mb"}, {"event": "log",
"message"}, {"event": "result", "outputs", "reports"} or {"event": "error", "code", "type",
"message"}. The process exits with the error's code (see NeuroADLib.errors). SIGTERM or the
stop file cancels cooperatively at the next step, removing partial outputs. With
`--persistent`, requests are read one per stdin line and models stay loaded between them.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import traceback
from pathlib import Path

from .errors import EXIT_INTERNAL, EXIT_OUT_OF_MEMORY, NeuroADError, UsageError
from .methods.registry import LONGITUDINAL_METHODS, METHODS
from .progress import Progress


def emit(event: dict) -> None:
    print(json.dumps(event, default=float), flush=True)


def _peak_memory_mb() -> float | None:
    """Peak resident memory of this process (None on Windows, which has no `resource`)."""
    try:
        import resource
    except ImportError:
        return None
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class _Events:
    """Adds stage events and peak memory to the pipeline's progress events."""

    def __init__(self, request_id) -> None:
        self.request_id = request_id
        self.stage = None

    def __call__(self, event: dict) -> None:
        stage = event.get("stage", "").split(":")[0]
        if stage and stage != self.stage:
            self.stage = stage
            emit({"event": "stage", "stage": stage, "id": self.request_id})
        emit({**event, "peak_memory_mb": _peak_memory_mb(), "id": self.request_id})


def handle(request: dict, cancel: threading.Event, loaded: dict | None = None) -> int:
    """Run one request, reporting events; returns the exit code."""
    from .pipeline import run

    request_id = request.get("id")
    stop_file = request.get("stop_file")

    def is_cancelled() -> bool:
        return cancel.is_set() or bool(stop_file and Path(stop_file).exists())

    try:
        check_request(request)
        progress = Progress(emit=_Events(request_id), is_cancelled=is_cancelled)
        if "visits" in request:
            reports = _run_visits(request, progress, loaded)
        else:
            reports = run(request["input"], request["age"], request["sex"],
                          request["methods"], request["out"], request.get("brain_mask"),
                          request.get("seed", 0), progress, loaded,
                          request.get("device", "auto"), request.get("options"))
        out = Path(request["out"])
        emit({"event": "result", "id": request_id, "peak_memory_mb": _peak_memory_mb(),
              "outputs": sorted(str(p) for p in out.rglob("*") if p.is_file()),
              "reports": {name: _summary(r) for name, r in reports.items()}})
        return 0
    except NeuroADError as error:
        return _error(request_id, error.exit_code, type(error).__name__, str(error))
    except MemoryError:
        return _error(request_id, EXIT_OUT_OF_MEMORY, "OutOfMemory",
                      "Out of memory: close other programs or run on a smaller machine load.")
    except Exception as error:  # noqa: BLE001 - a worker reports every failure as an event
        emit({"event": "log", "id": request_id, "message": traceback.format_exc()})
        return _error(request_id, EXIT_INTERNAL, type(error).__name__, str(error))


def _run_visits(request: dict, progress: Progress, loaded: dict | None) -> dict:
    from .longitudinal import run_visits

    method = request["methods"][0]
    visits = request["visits"]
    reports = run_visits([v["input"] for v in visits], [v["age"] for v in visits],
                         request["sex"], request["out"], method,
                         [v.get("brain_mask") for v in visits], request.get("seed", 0),
                         progress, request.get("device", "auto"),
                         (request.get("options") or {}).get(method), loaded_methods=loaded)
    return {f"visit{k}": report for k, report in enumerate(reports, start=1)}


def _check_path(where: str, key: str, value, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, str) or not value:
        raise UsageError(f"{where} {key!r} must be a path{' or null' if optional else ''}, "
                         f"not {value!r}.")


def _check_age(where: str, age) -> None:
    if age is not None and (isinstance(age, bool) or not isinstance(age, int | float)):
        raise UsageError(f"{where} 'age' must be a number of years, not {age!r}.")


def check_request(request: dict) -> None:
    """Refuse a request whose fields are missing or of the wrong type (UsageError), before
    any work; what the values mean (a plausible age, a readable input) is the run's to check."""
    if "_invalid" in request:
        raise UsageError(f"The request is not a JSON object: {request['_invalid']}")
    scan_keys = ("visits",) if "visits" in request else ("input", "age")
    for key in (*scan_keys, "sex", "methods", "out"):
        if key not in request:
            raise UsageError(f"The request lacks {key!r}.")
    _check_path("The request's", "out", request["out"])
    for key in ("brain_mask", "stop_file"):
        _check_path("The request's", key, request.get(key), optional=True)
    if "visits" in request:
        _check_visits(request)
    else:
        _check_path("The request's", "input", request["input"])
        _check_age("The request's", request["age"])
    if not isinstance(request["sex"], str):
        raise UsageError(f"The request's 'sex' must be \"F\" or \"M\", not {request['sex']!r}.")
    methods = request["methods"]
    if not isinstance(methods, list) or not methods or not all(
            isinstance(m, str) for m in methods):
        raise UsageError(f"The request's 'methods' must be a non-empty list of method names, "
                         f"not {methods!r}.")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UsageError(f"Unknown method(s) {', '.join(unknown)}; methods: "
                         f"{', '.join(METHODS)}.")
    seed = request.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
        raise UsageError(f"The request's 'seed' must be a whole number from 0 to {2**31 - 1}, "
                         f"not {seed!r}.")


def _check_visits(request: dict) -> None:
    visits = request["visits"]
    if not isinstance(visits, list) or not visits or not all(isinstance(v, dict)
                                                             for v in visits):
        raise UsageError("The request's 'visits' must be a non-empty list of {\"input\", "
                         f"\"age\"}} objects, in scan order, not {visits!r}.")
    for number, visit in enumerate(visits, start=1):
        where = f"Visit {number}'s"
        for key in ("input", "age"):
            if key not in visit:
                raise UsageError(f"Visit {number} lacks {key!r}.")
        _check_path(where, "input", visit["input"])
        _check_path(where, "brain_mask", visit.get("brain_mask"), optional=True)
        _check_age(where, visit["age"])
    methods = request["methods"]
    if (not isinstance(methods, list) or len(methods) != 1
            or methods[0] not in LONGITUDINAL_METHODS):
        raise UsageError(f"A request with 'visits' runs one longitudinal method "
                         f"({', '.join(LONGITUDINAL_METHODS)}), not {methods!r}.")


def _summary(report: dict) -> dict:
    return {key: report[key] for key in ("abnormality_index", "abnormality_index_z", "lesions",
                                         "threshold", "timings_s")}


def _error(request_id, code: int, kind: str, message: str) -> int:
    emit({"event": "error", "id": request_id, "code": code, "type": kind, "message": message})
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m NeuroADLib.worker",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("request", nargs="?", default="-", help="request JSON file, - for stdin")
    parser.add_argument("--persistent", action="store_true",
                        help="serve one request per stdin line, keeping models loaded")
    args = parser.parse_args(argv)
    cancel = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: cancel.set())
    try:
        if args.persistent:
            loaded: dict = {}
            for line in sys.stdin:
                if line.strip():
                    cancel.clear()
                    handle(_parse(line), cancel, loaded)
            return 0
        try:
            text = sys.stdin.read() if args.request == "-" else Path(args.request).read_text()
        except (OSError, UnicodeDecodeError) as error:
            return _error(None, UsageError.exit_code, UsageError.__name__,
                          f"Cannot read the request {args.request}: {error}")
        return handle(_parse(text), cancel)
    finally:
        # Answered: a SIGTERM from now on must not turn a finished run into a killed one
        # (Python restores the default handler while it shuts down, but keeps an ignore).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _parse(text: str) -> dict:
    try:
        request = json.loads(text)
    except json.JSONDecodeError as error:
        return {"_invalid": str(error)}
    return request if isinstance(request, dict) else {"_invalid": "not an object"}


if __name__ == "__main__":
    sys.exit(main())

"""Kill and cancel trials: worker runs of every registered method stopped at random (seeded)
points by SIGTERM, the stop file or SIGKILL. After each trial: no partial output folder (none,
or a complete one when the run finished or was killed after its final rename), no staging
folder unless the worker was killed, no orphan process (nothing left in the worker's session),
and the next run into the same output succeeds and removes what a killed run left.
Prints a markdown table per trial and the counts per method and signal; exits 1 when a trial
fails a check.

    python benchmarks/kill_trials.py [--scan SCAN] [--trials 20] [--seed 0]

Each method first runs once whole (its duration T); each trial then stops a run at a uniform
random time in (0.05 T, 0.95 T). The worker processes run on one thread. CADD variants run
with cheap options (t_int 100, respacing 50) unless --paper-options is given.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from NeuroADLib.errors import EXIT_CANCELLED  # noqa: E402
from NeuroADLib.methods.registry import METHODS  # noqa: E402

DEMO = REPO / "NeuroADLib" / "data" / "demo" / "tcga_fg_6692_t1.nii.gz"
SIGNALS = ("sigkill", "sigterm", "stop_file")
CHEAP_CADD = {"t_int": 100, "respacing": 50}
OUTPUTS = {"pseudo_healthy.nii.gz", "anomaly_map.nii.gz", "anomaly_mask.nii.gz", "report.json",
           "summary.png"}
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1"}
STOP_TIMEOUT_S = 300.0


@dataclass
class WorkerRun:
    """One worker process on a request, its events read as they come."""

    request: dict
    folder: Path
    events: list = field(default_factory=list)

    def start(self) -> None:
        path = self.folder / "request.json"
        path.write_text(json.dumps(self.request))
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "NeuroADLib.worker", str(path)], stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True, env={**os.environ, **ONE_THREAD},
            start_new_session=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            if line.strip():
                self.events.append(json.loads(line))

    def wait(self, timeout: float | None = None) -> int:
        code = self.process.wait(timeout)
        self.reader.join(10)
        self.ended = time.perf_counter()
        return code

    @property
    def stage(self) -> str:
        stages = [e.get("stage", "") for e in self.events if e.get("event") == "progress"]
        return stages[-1] if stages else "(starting)"


def session_members(session: int) -> list[int]:
    """Processes still alive in a session (the worker's: it started one), from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def staging_of(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.partial-*"))


def complete(out: Path) -> bool:
    return out.is_dir() and {p.name for p in out.iterdir()} == OUTPUTS


def request_for(method: str, scan: Path, out: Path, stop: Path, cheap: bool) -> dict:
    options = {method: CHEAP_CADD} if cheap and METHODS[method].family == "cadd" else {}
    return {"input": str(scan), "age": 50, "sex": "F", "methods": [method], "out": str(out),
            "device": "cpu", "options": options, "stop_file": str(stop), "id": method}


def full_run(request: dict, folder: Path) -> tuple[bool, float]:
    """A run left alone: whether it succeeded with complete outputs, and its duration."""
    run = WorkerRun(request, folder)
    run.start()
    code = run.wait(STOP_TIMEOUT_S * 4)
    return code == 0 and complete(Path(request["out"])), run.ended - run.started


def trial(request: dict, folder: Path, how: str, at: float) -> dict:
    """Stop one run `at` seconds after its start; what it left, then the next run."""
    out, stop = Path(request["out"]), Path(request["stop_file"])
    stop.unlink(missing_ok=True)
    run = WorkerRun(request, folder)
    run.start()
    deadline = run.started + at
    while time.perf_counter() < deadline and run.process.poll() is None:
        time.sleep(0.05)
    stage, signalled = run.stage, time.perf_counter()
    if run.process.poll() is None:
        if how == "sigkill":
            run.process.kill()
        elif how == "sigterm":
            run.process.send_signal(signal.SIGTERM)
        else:
            stop.write_text("stop")
    try:
        code = run.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:  # did not stop: a failed trial, then make sure it ends
        run.process.kill()
        code = run.wait()
    orphans = session_members(run.process.pid)
    for pid in orphans:  # ours (the worker's session): end them so the next trial is clean
        os.kill(pid, signal.SIGKILL)
    stop.unlink(missing_ok=True)
    output = "none" if not out.exists() else "complete" if complete(out) else "PARTIAL"
    result = {"stage": stage, "code": code, "stop_s": run.ended - signalled,
              "finished_first": code == 0, "output": output,
              "staging_left": len(staging_of(out)), "orphans": len(orphans)}
    next_ok, _ = full_run(request, folder)
    result["next_ok"] = next_ok
    result["staging_after_next"] = len(staging_of(out))
    expected = 0 if code == 0 else (-signal.SIGKILL if how == "sigkill" else EXIT_CANCELLED)
    # A kill that lands after the outputs were renamed into place leaves them whole.
    result["passed"] = (code == expected and output != "PARTIAL"
                        and (code != 0 or output == "complete") and not result["orphans"]
                        and (how == "sigkill" or not result["staging_left"])
                        and next_ok and not result["staging_after_next"])
    for path in out.iterdir() if out.is_dir() else []:
        path.unlink()
    if out.is_dir():
        out.rmdir()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scan", type=Path, default=DEMO)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--paper-options", action="store_true",
                        help="run CADD variants at their default (paper) options")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    methods = list(METHODS)
    plan = [(methods[k % len(methods)], SIGNALS[(k // len(methods)) % len(SIGNALS)])
            for k in range(args.trials)]
    print("| # | method | signal | at s (of T) | stage then | exit | stop s | output | "
          "staging left | orphans | next run | staging after next run | ok |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    results, durations = [], {}
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        for number, (method, how) in enumerate(plan, 1):
            out = folder / f"out_{method}"
            request = request_for(method, args.scan, out, folder / "stop", not
                                  args.paper_options)
            if method not in durations:
                ok, durations[method] = full_run(request, folder)
                if not ok:
                    print(f"{method}: a run left alone failed; no trials.", file=sys.stderr)
                    return 1
                for path in out.iterdir():
                    path.unlink()
                out.rmdir()
            at = float(rng.uniform(0.05, 0.95)) * durations[method]
            result = trial(request, folder, how, at)
            results.append((method, how, result))
            print(f"| {number} | {method} | {how} | {at:.1f} ({durations[method]:.0f}) | "
                  f"{result['stage']} | {result['code']} | {result['stop_s']:.1f} | "
                  f"{result['output']} | {result['staging_left']} | "
                  f"{result['orphans']} | {'ok' if result['next_ok'] else 'FAILED'} | "
                  f"{result['staging_after_next']} | {'yes' if result['passed'] else 'NO'} |",
                  flush=True)
    counts = Counter((m, h) for m, h, _ in results)
    passed = Counter((m, h) for m, h, r in results if r["passed"])
    print("\n| method | " + " | ".join(SIGNALS) + " |")
    print("|---|" + "---|" * len(SIGNALS))
    for method in methods:
        cells = [f"{passed[(method, h)]}/{counts[(method, h)]}" for h in SIGNALS]
        print(f"| {method} | " + " | ".join(cells) + " |")
    finished = sum(r["finished_first"] for _, _, r in results)
    whole = sum(r["code"] != 0 and r["output"] == "complete" for _, _, r in results)
    staged = sum(r["staging_left"] > 0 for _, _, r in results)
    cleaned = all(r["staging_after_next"] == 0 for _, _, r in results)
    print(f"\n{len(results)} trials, {sum(passed.values())} passed; {finished} runs finished "
          f"before their signal; {whole} killed after their outputs were in place (whole); "
          f"{staged} killed runs left a staging folder, "
          + ("all removed by the next run." if cleaned else "NOT all removed by the next run."))
    return 0 if sum(passed.values()) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())

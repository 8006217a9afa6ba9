"""Time and peak memory of `neuroad preprocess`, each run in a fresh process.

    python benchmarks/bench_preprocess.py SCAN [SCAN ...] [--threads 2] [--repeat 1]

Prints one line per run (wall time, per-step timings, peak resident memory of the child) and
writes nothing else. Peak memory is the child's own maximum resident set size (wait4),
Python runtime included.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_once(scan: Path, threads: int) -> dict:
    """One `neuroad preprocess` in a child process; its own peak memory from wait4."""
    with tempfile.TemporaryDirectory() as out, tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        child = subprocess.Popen(
            [sys.executable, "-m", "NeuroADLib", "preprocess", str(scan), "--out", out,
             "--threads", str(threads)], stdout=log, stderr=log)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            log.seek(0)
            raise SystemExit(f"{scan}: {log.read().decode().strip()}")
        report = json.loads((Path(out) / "preprocess.json").read_text())
    return {
        "scan": scan.name,
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "steps_s": report["timings_s"],
        "brain_ml": report["quality"]["brain_volume_ml"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scans", nargs="+", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    for scan in args.scans:
        for _ in range(args.repeat):
            print(json.dumps(run_once(scan, args.threads)), flush=True)


if __name__ == "__main__":
    main()

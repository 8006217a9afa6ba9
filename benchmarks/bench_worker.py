"""The worker protocol's overhead: the same run in-process (`pipeline.run`) and through
`python -m NeuroADLib.worker`, alternating, each in a fresh process; plus the per-stage
timings and peak memory the worker reports.

    python benchmarks/bench_worker.py SCAN --age 50 --sex F --method zscore [--repeat 2]
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

IN_PROCESS = """
import sys, time
from NeuroADLib.pipeline import run
start = time.perf_counter()
run(sys.argv[1], float(sys.argv[2]), sys.argv[3], [sys.argv[4]], sys.argv[5])
print(time.perf_counter() - start)
"""


def timed(command: list[str], stdin: str | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(command, input=stdin, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scan", type=Path)
    parser.add_argument("--age", type=float, required=True)
    parser.add_argument("--sex", required=True)
    parser.add_argument("--method", default="zscore")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    direct, worker, last_result = [], [], None
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as out:
            seconds, _ = timed([sys.executable, "-c", IN_PROCESS, str(args.scan), str(args.age),
                                args.sex, args.method, str(Path(out) / "r")])
            direct.append(seconds)
        with tempfile.TemporaryDirectory() as out:
            request = json.dumps({"input": str(args.scan), "age": args.age, "sex": args.sex,
                                  "methods": [args.method], "out": str(Path(out) / "r")})
            seconds, stdout = timed([sys.executable, "-m", "NeuroADLib.worker", "-"], request)
            worker.append(seconds)
            events = [json.loads(line) for line in stdout.splitlines() if line.strip()]
            last_result = events[-1]
    print(json.dumps({
        "cpu_threads": os.cpu_count(),
        "in_process_s": [round(s, 2) for s in direct],
        "worker_s": [round(s, 2) for s in worker],
        "overhead_ratio_of_medians": round(sorted(worker)[len(worker) // 2]
                                           / sorted(direct)[len(direct) // 2], 3),
        "worker_timings_s": last_result["reports"][args.method]["timings_s"],
        "worker_peak_memory_mb": last_result["peak_memory_mb"],
    }, indent=2))


if __name__ == "__main__":
    main()

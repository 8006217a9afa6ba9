"""Cohort-scale batch figures: throughput of `neuroad batch` run locally, on `local:1` and on
`local:2` over the same cases, and the client's peak memory with a table of many rows.

    python benchmarks/cluster_batch.py throughput --ixi ../shared/data/ixi_t1_2mm --cases 10 \
        --repeats 2 --work /tmp/cluster_bench
    python benchmarks/cluster_batch.py client-memory --rows 50000 --cluster local:2 \
        --work /tmp/cluster_bench
    python benchmarks/cluster_batch.py worker-start --workers 2 --method zscore

`throughput` runs each setting as its own process (start-up, imports and cluster start
included), into a fresh output folder each time, and prints wall seconds (median of the
repeats), cases per minute, the overhead per case against the local run, and what each worker
process spent on imports and model loads (from cluster.json). `client-memory` fabricates rows
whose scans do not exist (each fails fast on a worker) and reports the client's peak resident
memory (this process, the workers excluded) and its wall time. `worker-start` times what a
worker costs before its first case: a LocalCluster's start, then in each worker the engine's
imports (torch, SimpleITK, MONAI) and the verified model load.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = {"local (sequential)": [], "local:1": ["--cluster", "local:1"],
            "local:2": ["--cluster", "local:2"]}


def ixi_table(ixi: Path, cases: int, path: Path) -> Path:
    with (ixi / "participants.csv").open() as handle:
        subjects = list(csv.DictReader(handle))[:cases]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "age", "sex"])
        writer.writerows([ixi / s["file"], s["age"], s["sex"]] for s in subjects)
    return path


def throughput(args: argparse.Namespace) -> None:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    table = ixi_table(Path(args.ixi).resolve(), args.cases, work / "cases.csv")
    walls: dict[str, list[float]] = {name: [] for name in SETTINGS}
    workers: dict[str, dict] = {}
    for repeat in range(args.repeats):
        for name, extra in SETTINGS.items():
            out = work / f"out-{name.split()[0].replace(':', '')}-{repeat}"
            shutil.rmtree(out, ignore_errors=True)
            start = time.monotonic()
            subprocess.run([sys.executable, "-m", "NeuroADLib", "batch", str(table), "--method",
                            args.method, "--out", str(out), "--quiet", *extra],
                           stdout=subprocess.DEVNULL, check=False)
            walls[name].append(time.monotonic() - start)
            with (out / "summary.csv").open() as handle:
                failed = [row["case"] for row in csv.DictReader(handle) if row["status"] != "ok"]
            if failed:
                raise SystemExit(f"{name}: cases failed ({', '.join(failed)}); see {out}")
            if (out / "cluster.json").exists():
                workers[name] = json.loads((out / "cluster.json").read_text())["workers"]
    local = statistics.median(walls["local (sequential)"])
    print(f"{args.cases} IXI cases, method {args.method}, {args.repeats} repeat(s); wall s "
          "median (min-max)")
    print("| setting | wall s | cases/min | overhead s/case vs local |")
    print("|---|---|---|---|")
    for name, values in walls.items():
        wall = statistics.median(values)
        print(f"| {name} | {wall:.1f} ({min(values):.1f}-{max(values):.1f}) | "
              f"{args.cases / wall * 60:.2f} | {(wall - local) / args.cases:+.2f} |")
    for name, stats in workers.items():
        for worker in stats.values():
            print(f"{name} worker {worker['name']}: {worker['cases']} cases, imports "
                  f"{worker['import_s']:.2f} s, {worker['model_loads']} model load(s) "
                  f"{worker['model_load_s']:.2f} s, {worker['threads']} thread(s)")


def client_memory(args: argparse.Namespace) -> None:
    from NeuroADLib.batch import run_batch

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    table = work / "fabricated.csv"
    with table.open("w") as handle:
        handle.write("path,age,sex\n")
        handle.writelines(f"{work}/absent/scan{i:06d}.nii.gz,50,F\n" for i in range(args.rows))
    out = work / "out-fabricated"
    shutil.rmtree(out, ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.monotonic()
    summary = run_batch(table, ["zscore"], out, show_progress=False, cluster=args.cluster)
    wall = time.monotonic() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with summary.open() as handle:
        rows = sum(1 for _ in csv.DictReader(handle))
    print(f"{args.rows} fabricated rows on {args.cluster or 'this process'}: {rows} summary "
          f"rows, wall {wall:.0f} s ({args.rows / wall:.0f} cases/s), client peak RSS "
          f"{peak:.0f} MB (before the batch: {before:.0f} MB)")


def _engine_start(method: str) -> dict:
    start = time.perf_counter()
    from NeuroADLib.pipeline import load_methods

    imported = time.perf_counter()
    load_methods([method], {})
    return {"imports_s": round(imported - start, 2),
            "model_load_s": round(time.perf_counter() - imported, 2)}


def worker_start(args: argparse.Namespace) -> None:
    import distributed

    start = time.monotonic()
    cluster = distributed.LocalCluster(n_workers=args.workers, threads_per_worker=1,
                                       processes=True, dashboard_address=":0")
    client = distributed.Client(cluster)
    client.wait_for_workers(args.workers)
    up = time.monotonic() - start
    costs = client.run(_engine_start, args.method)
    print(f"LocalCluster of {args.workers} worker processes up in {up:.1f} s; per worker, "
          f"before its first {args.method} case: {list(costs.values())}")
    client.close()
    cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(required=True)
    p = commands.add_parser("throughput")
    p.add_argument("--ixi", required=True, help="the IXI folder (participants.csv)")
    p.add_argument("--cases", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--method", default="zscore")
    p.add_argument("--work", required=True)
    p.set_defaults(run=throughput)
    p = commands.add_parser("client-memory")
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--cluster", default="local:2", help="a cluster SPEC; 'none' for local")
    p.add_argument("--work", required=True)
    p.set_defaults(run=client_memory)
    p = commands.add_parser("worker-start")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--method", default="zscore")
    p.set_defaults(run=worker_start)
    args = parser.parse_args()
    if getattr(args, "cluster", None) == "none":
        args.cluster = None
    args.run(args)


if __name__ == "__main__":
    main()

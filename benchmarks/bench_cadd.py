"""CADD inference cost: seconds per scan, network evaluations and peak memory of each variant
and sampler setting, on the grid (preprocessing excluded: see bench_preprocess.py).

Each setting runs in a fresh process (so the peak memory is its own): one warm-up scan, then
the timed scans. Network evaluations are counted two ways: transformer calls (one per batched
step) and latent samples through the transformer (a batch of k counts k).

    python benchmarks/bench_cadd.py --bundle NeuroADLib/models/bundled/cadd-ixi-2mm \
        --cases validation.npz --scans 3 --device cpu \
        --setting cadd --setting cadd:respacing=5 --setting ldm --out bench_cadd.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def parse_setting(text: str) -> tuple[str, dict]:
    """'cadd:respacing=5,t_int=1000' -> ('cadd', {'respacing': 5, 't_int': 1000})."""
    variant, _, rest = text.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        name, _, value = item.partition("=")
        options[name] = float(value) if "." in value else int(value)
    return variant, options


def run_one(bundle: str, cases: str, setting: str, scans: int, device: str, threads: int
            ) -> dict:
    import torch

    from NeuroADLib.gridpack import read_pack
    from NeuroADLib.methods import load_method
    from NeuroADLib.subject import Subject

    torch.set_num_threads(threads)
    variant, options = parse_setting(setting)
    method = load_method(variant, bundle, options).to(device)
    calls, samples = [0], [0]

    def count(_module, inputs, _output):
        calls[0] += 1
        samples[0] += inputs[0].shape[0]

    method.model.transformer.register_forward_hook(count)
    pack = read_pack(cases)
    rows = list(range(min(scans + 1, len(pack.rows))))
    times = []
    for position, k in enumerate(rows):
        row = pack.rows[k]
        image, brain = pack.volume(k, "image"), pack.volume(k, "brain_mask")
        if position == 1:
            calls[0] = samples[0] = 0
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        method.predict(image, brain, Subject(float(row["age"]) if row.get("age") else None,
                                             row.get("sex") or None))
        if device == "cuda":
            torch.cuda.synchronize()
        if position >= 1:  # the first scan is the warm-up
            times.append(time.perf_counter() - start)
    timed = len(times)
    result = {
        "setting": setting, "device": device, "threads": threads, "scans": timed,
        "seconds_per_scan": sorted(times)[timed // 2],
        "transformer_calls_per_scan": calls[0] / timed,
        "latent_samples_per_scan": samples[0] / timed,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if device == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["gpu"] = torch.cuda.get_device_name()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True, help="CADD bundle folder")
    parser.add_argument("--cases", required=True, help="grid pack of scans (neuroad pack)")
    parser.add_argument("--setting", action="append", required=True,
                        help="VARIANT[:option=value,...], e.g. cadd:respacing=5")
    parser.add_argument("--scans", type=int, default=3, help="timed scans (after a warm-up)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="JSON file for the results")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.bundle, args.cases, args.setting[0], args.scans,
                                 args.device, args.threads)))
        return
    results = []
    for setting in args.setting:
        command = [sys.executable, __file__, "--one", "--bundle", args.bundle, "--cases",
                   args.cases, "--setting", setting, "--scans", str(args.scans), "--device",
                   args.device, "--threads", str(args.threads)]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    print("\n| setting | device | s/scan | transformer calls | latent samples | peak RSS MB "
          "| peak GPU MB |\n|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['setting']} | {r['device']} ({r['threads']} threads) | "
              f"{r['seconds_per_scan']:.2f} | {r['transformer_calls_per_scan']:.0f} | "
              f"{r['latent_samples_per_scan']:.0f} | {r['peak_rss_mb']:.0f} | "
              f"{r.get('peak_gpu_mb', float('nan')):.0f} |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

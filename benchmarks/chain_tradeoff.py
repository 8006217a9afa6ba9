"""Quality against speed of THOR's and AutoDDPM's reverse chains (issue 13): the papers' full
ancestral chains (stride 1, eta 1) against respaced DDIM chains, on the slices around the
lesion of the first lesioned cases of a benchmark (the full chains cost hundreds of network
evaluations per slice batch, too many for whole volumes on 2 CPU cores).

    python benchmarks/chain_tradeoff.py --model models/ddpm \
        --cases ~/neuroad-cache/benchmarks/synthetic/cases.csv --n 3 --slices 8 \
        --chain 1:1 --chain 10:0 --chain 50:0 [--json out.json]

Each --chain is STRIDE:ETA. Prints, per method and chain, the mean voxel AP over the cases
(inside the brain of the slices taken; each scan harmonised whole, the model run on those
slices and MARGIN more on each side), the network evaluations per slice batch and the mean
seconds per case (of the slices run).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import average_precision_score

from NeuroADLib.evaluation.harness import CaseVolumes
from NeuroADLib.methods import load_method

# Slices run on each side of the scored ones, so that the 3D median filter and the brain
# erosion of the post-processing see the volume around them as in a whole-scan run.
MARGIN = 4


def lesion_block(lesion: np.ndarray, count: int) -> tuple[slice, slice]:
    """(the slices to run, the scored ones within them): the `count` consecutive axial slices
    that hold the most lesion, with MARGIN more on each side to run."""
    per_slice = lesion.reshape(len(lesion), -1).sum(axis=1)
    window = np.convolve(per_slice, np.ones(count), mode="valid")
    first = int(np.argmax(window))
    start = int(np.clip(first - MARGIN, 0, len(lesion) - count - 2 * MARGIN))
    run = slice(start, start + count + 2 * MARGIN)
    return run, slice(first - start, first - start + count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the THOR/AutoDDPM bundle folder")
    parser.add_argument("--cases", required=True, help="a benchmark cases.csv")
    parser.add_argument("--n", type=int, default=4, help="lesioned cases to take")
    parser.add_argument("--slices", type=int, default=8, help="axial slices per case")
    parser.add_argument("--chain", action="append", required=True, help="STRIDE:ETA")
    parser.add_argument("--methods", default="thor,autoddpm")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cases = CaseVolumes(args.cases)
    lesioned = [case for case in cases.cases if case.get("lesion_mask")][:args.n]
    volumes = []
    for case in lesioned:
        image, brain = cases.read(case, "image"), cases.read(case, "brain_mask")
        lesion = cases.read(case, "lesion_mask")
        block = lesion_block(lesion, args.slices)
        volumes.append((image, brain, lesion, block))

    results = []
    for name in args.methods.split(","):
        for chain in args.chain:
            stride, eta = chain.split(":")
            method = load_method(name, args.model, {"stride": int(stride), "eta": float(eta)})
            aps, seconds = [], []
            for image, brain, lesion, (run, scored) in volumes:
                harmonised, _ = method.standard.harmonise(image, brain)  # on the whole grid
                start = time.perf_counter()
                anomaly, _ = method.model.predict(harmonised[run], brain[run])
                seconds.append(time.perf_counter() - start)
                inside = brain[run][scored]
                aps.append(average_precision_score(lesion[run][scored][inside],
                                                   anomaly[scored][inside]))
            row = {"method": name, "stride": int(stride), "eta": float(eta),
                   "network_evaluations": method.model.settings.network_evaluations,
                   "ap": float(np.mean(aps)), "seconds_per_case": float(np.mean(seconds)),
                   "cases": len(volumes), "slices": args.slices}
            results.append(row)
            print(f"{name} stride {stride} eta {eta}: AP {row['ap']:.3f}, "
                  f"{row['network_evaluations']} network evaluations, "
                  f"{row['seconds_per_case']:.1f} s per case", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

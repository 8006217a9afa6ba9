"""The slice trainers' data preparation (training/slice_data.py's `prepare_slices`: the cohort
harmonised to its intensity standard, one acquisition-augmented copy of each training scan
harmonised too) with every scan in one process against spread over `--workers` processes;
checks that both give the same slices.

    python benchmarks/prepare_slices.py --cohort ~/neuroad-cache/ixi_2mm [--workers 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from NeuroADLib.training.slice_data import prepare_slices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cohort", required=True, help="a prepared cohort folder or its pack")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--copies", type=int, default=1)
    args = parser.parse_args()
    prepared, seconds = {}, {}
    for workers in (1, args.workers):
        began = time.perf_counter()
        prepared[workers] = prepare_slices(Path(args.cohort), args.copies, 0, lambda _: None,
                                           workers)
        seconds[workers] = time.perf_counter() - began
        print(f"{workers} process(es): {seconds[workers]:.0f} s", flush=True)
    one, many = prepared[1], prepared[args.workers]
    same = all(np.array_equal(a, b) for a, b in
               zip(one.slices.images + one.validation.images,
                   many.slices.images + many.validation.images, strict=True))
    print(f"{seconds[1] / seconds[args.workers]:.2f}x with {args.workers} processes; "
          f"same slices: {same}")


if __name__ == "__main__":
    main()

"""The normative check: does a wrong age raise the abnormality index of healthy subjects?

Compares the per-case CSVs of two `neuroad evaluate` runs on the same healthy cases, one with
the true ages and one with `--age-shift` (paired: per case, shifted minus true), and prints the
count of cases whose index rose, the mean change, and the paired t-test and Wilcoxon
signed-rank test (scipy).

    python benchmarks/age_shift_check.py RESULTS/true/cases.csv RESULTS/shifted/cases.csv
"""

from __future__ import annotations

import argparse
import csv
import json

import numpy as np
from scipy import stats


def healthy_indices(path: str) -> dict[tuple[str, str], float]:
    with open(path, newline="") as handle:
        return {(row["method"], row["case"]): float(row["abnormality_index"])
                for row in csv.DictReader(handle) if row["kind"] == "healthy"}


def compare(true_csv: str, shifted_csv: str) -> dict[str, dict]:
    true, shifted = healthy_indices(true_csv), healthy_indices(shifted_csv)
    results = {}
    for method in sorted({method for method, _ in shifted}):
        cases = sorted(case for m, case in shifted if m == method and (m, case) in true)
        before = np.array([true[(method, case)] for case in cases])
        after = np.array([shifted[(method, case)] for case in cases])
        results[method] = {
            "cases": len(cases), "rose": int(np.sum(after > before)),
            "index_true_age_mean": float(before.mean()),
            "index_shifted_age_mean": float(after.mean()),
            "paired_t_p": float(stats.ttest_rel(after, before).pvalue),
            "wilcoxon_p": float(stats.wilcoxon(after, before).pvalue),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("true_csv")
    parser.add_argument("shifted_csv")
    args = parser.parse_args()
    print(json.dumps(compare(args.true_csv, args.shifted_csv), indent=2))


if __name__ == "__main__":
    main()

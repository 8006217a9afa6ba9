"""Largest absolute differences between NeuroAD's metrics and their references (scikit-learn,
scipy) on seeded random data with ties and masks.

    python benchmarks/metric_agreement.py
"""

from __future__ import annotations

import json

import numpy as np
from scipy import stats
from sklearn import metrics as reference

from NeuroADLib.evaluation import metrics


def main() -> None:
    rng = np.random.default_rng(0)
    worst: dict[str, float] = {}

    def record(name: str, ours: float, theirs: float) -> None:
        worst[name] = max(worst.get(name, 0.0), abs(float(ours) - float(theirs)))

    for trial in range(20):
        scores = np.round(rng.random((20, 20, 20)), 2 if trial % 2 else 6)  # ties every other
        labels = rng.random((20, 20, 20)) < 0.1
        mask = rng.random((20, 20, 20)) < 0.8
        s, y = scores[mask], labels[mask]
        record("voxel_auroc", metrics.voxel_auroc(scores, labels, mask),
               reference.roc_auc_score(y, s))
        record("average_precision", metrics.average_precision(scores, labels, mask),
               reference.average_precision_score(y, s))
        at = metrics.confusion_at_threshold(scores, labels, 0.7, mask)
        record("dice_at_threshold", at["dice"], reference.f1_score(y, s >= 0.7))
        record("precision", at["precision"], reference.precision_score(y, s >= 0.7))
        record("recall", at["recall"], reference.recall_score(y, s >= 0.7))
        a, b = rng.normal(0, 1, 30), rng.normal(0.5, 2, 25)
        t, p = metrics.welch_t_test(a, b)
        ref = stats.ttest_ind(a, b, equal_var=False)
        record("welch_t", t, ref.statistic)
        record("welch_p", p, ref.pvalue)
        r, p = metrics.pearson(a[:25], b)
        ref = stats.pearsonr(a[:25], b)
        record("pearson_r", r, ref.statistic)
        record("pearson_p", p, ref.pvalue)
        record("subject_auroc", metrics.subject_auroc(a, b),
               reference.roc_auc_score(np.r_[np.zeros(30), np.ones(25)], np.r_[a, b]))
    print(json.dumps({k: float(f"{v:.3g}") for k, v in worst.items()}, indent=2))


if __name__ == "__main__":
    main()

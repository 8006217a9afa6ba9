"""How well an imputed follow-up matches the follow-up it stands for, next to the obvious
alternative, copying the last visit (the longitudinal report, Tables 6.2-6.3)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..synthesis.aging import AgeTrend
from .metrics import mae_psnr_ssim

# impute(image, brain, age, to_age) -> the imputed follow-up on the grid
Imputer = Callable[[np.ndarray, np.ndarray, float, float], np.ndarray]


def imputation_errors(impute: Imputer, trend: AgeTrend, images: Sequence[np.ndarray],
                      brains: Sequence[np.ndarray], ages: Sequence[float],
                      gaps: Sequence[float]) -> dict:
    """Per gap (years): the mean MAE / PSNR / SSIM inside the brain of the imputed follow-up
    and of the baseline copied, both against the pseudo-longitudinal follow-up the age trend
    makes of each scan (rate 1), and the share of the change's MAE imputation removes."""
    figures = {}
    for gap in gaps:
        imputed, copied = [], []
        for image, brain, age in zip(images, brains, ages, strict=True):
            truth = trend.follow_up(image, brain, age, gap)
            imputed.append(mae_psnr_ssim(impute(image, brain, age, age + gap), truth, brain))
            copied.append(mae_psnr_ssim(image, truth, brain))
        mean = {name: {key: float(np.mean([f[key] for f in values])) for key in values[0]}
                for name, values in (("tdm", imputed), ("copy_last_visit", copied))}
        copy_error = mean["copy_last_visit"]["mae"]
        mean["mae_removed"] = 1.0 - mean["tdm"]["mae"] / copy_error if copy_error else 0.0
        figures[f"{gap:g}"] = mean
    return figures

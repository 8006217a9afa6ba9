"""Evaluation metrics: voxel-level (AUROC, AP, Dice, oracle max Dice), lesion-level detection,
reconstruction quality (MAE, PSNR, SSIM) and subject/cohort statistics."""

from .metrics import (
    average_precision,
    confusion_at_threshold,
    dice,
    global_max_dice,
    healthy_false_positive_fraction,
    l1_ratio,
    lesion_detection_rate,
    mae_psnr_ssim,
    max_dice,
    mean_with_ci,
    pearson,
    subject_auroc,
    voxel_auroc,
    welch_t_test,
)

__all__ = [
    "average_precision",
    "confusion_at_threshold",
    "dice",
    "global_max_dice",
    "healthy_false_positive_fraction",
    "l1_ratio",
    "lesion_detection_rate",
    "mae_psnr_ssim",
    "max_dice",
    "mean_with_ci",
    "pearson",
    "subject_auroc",
    "voxel_auroc",
    "welch_t_test",
]

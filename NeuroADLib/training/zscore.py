"""Fit the voxel-wise normative model on the cohort's training split and calibrate it on the
validation split (threshold at a healthy false-positive rate, abnormality-index reference)."""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..cohort import read_manifest
from ..grid import GridSpec
from ..methods.base import HEALTHY_FPR, INDEX_TOP_FRACTION, Calibration
from ..methods.zscore import VoxelNormativeModel, ZScoreConfig
from ..outputs import atomic_output_folder
from ..postprocessing import ReferenceStatistics, healthy_calibrated_threshold
from .provenance import write_manifest


def _load(cohort: Path, rows: list[dict]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    images = [sitk.GetArrayFromImage(sitk.ReadImage(str(cohort / r["image"]))) for r in rows]
    masks = [sitk.GetArrayFromImage(sitk.ReadImage(str(cohort / r["brain_mask"]))) > 0
             for r in rows]
    return images, masks


def train_zscore(cohort_dir: str | os.PathLike, out: str | os.PathLike,
                 config: ZScoreConfig | None = None, fpr: float = HEALTHY_FPR) -> Path:
    config = config or ZScoreConfig()
    cohort = Path(cohort_dir)
    rows = read_manifest(cohort)
    train = [r for r in rows if r["split"] == "train" and (r["age"] or not config.age_adjusted)]
    validation = [r for r in rows if r["split"] == "validation"]
    log = [f"zscore training on {cohort}: {len(train)} train, {len(validation)} validation "
           f"subjects; config {asdict(config)}"]
    start = time.perf_counter()
    images, masks = _load(cohort, train)
    ages = [float(r["age"]) for r in train] if config.age_adjusted else None
    model = VoxelNormativeModel.fit(images, masks, ages, config)
    del images
    val_images, val_masks = _load(cohort, validation)
    val_maps = [model.anomaly_map(image, mask, float(r["age"]) if r["age"] else None)
                for image, mask, r in zip(val_images, val_masks, validation, strict=True)]
    calibration = Calibration(
        threshold=healthy_calibrated_threshold(val_maps, val_masks, fpr), fpr=fpr,
        reference=ReferenceStatistics.from_healthy_maps(val_maps, val_masks, INDEX_TOP_FRACTION))
    flagged = sum(int((m > calibration.threshold).sum()) for m in val_maps)
    seconds = time.perf_counter() - start
    healthy_fpr = flagged / sum(int(m.sum()) for m in val_masks)
    log += [f"fit and calibration: {seconds:.1f} s",
            f"healthy-calibrated threshold (|z|) at {fpr:.1%}: {calibration.threshold:.4f}; "
            f"realised validation healthy FPR {healthy_fpr:.5f}",
            f"abnormality index of healthy validation subjects: mean "
            f"{calibration.reference.index_mean:.3f}, std {calibration.reference.index_std:.3f}"]
    with atomic_output_folder(out) as staging:
        model.save(staging)
        calibration.save(staging)
        (staging / "training.log").write_text("\n".join(log) + "\n")
        write_manifest(
            staging, id="zscore-ixi-2mm", method="zscore", version="1", contrast="t1",
            description="Voxel-wise normative T1 intensity model (mean, std, linear age term) "
                        "on the 2 mm MNI grid, trained on healthy IXI subjects.",
            licence="CC BY-SA 3.0, as the IXI data it is derived from",
            covariates=["age"] if config.age_adjusted else [],
            grid=GridSpec().to_dict(), config=asdict(config),
            training_data={"cohort": str(cohort.resolve()), "dataset": "IXI (CC BY-SA 3.0)",
                           "train": [r["subject"] for r in train],
                           "validation": [r["subject"] for r in validation]},
            calibration={"threshold": calibration.threshold, "healthy_fpr_target": fpr,
                         "index_top_fraction": INDEX_TOP_FRACTION},
            metrics={"validation_healthy_fpr_at_threshold": healthy_fpr,
                     "validation_abnormality_index_mean": calibration.reference.index_mean,
                     "validation_abnormality_index_std": calibration.reference.index_std,
                     "training_seconds": round(seconds, 1)},
        )
    return Path(out)

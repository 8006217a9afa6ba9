"""Fit the voxel-wise normative model on the cohort's training split and calibrate it on the
validation split (threshold at a healthy false-positive rate, abnormality-index reference),
both harmonised to the cohort's intensity standard, which the bundle carries."""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path

from ..grid import GridSpec
from ..methods.base import HEALTHY_FPR, INDEX_TOP_FRACTION, Calibration
from ..methods.zscore import VoxelNormativeModel, ZScoreConfig
from ..outputs import atomic_output_folder
from ..preprocessing.harmonisation import HarmonisationConfig
from ..subject import Subject
from ..synthesis.acquisition import AcquisitionConfig
from .data import CohortSplit, load_split
from .harmonisation import (
    augmented_split,
    cohort_grid,
    fit_cohort_standard,
    harmonised_split,
)
from .provenance import write_manifest


def train_zscore(cohort_dir: str | os.PathLike, out: str | os.PathLike,
                 config: ZScoreConfig | None = None, fpr: float = HEALTHY_FPR,
                 harmonisation: HarmonisationConfig | None = None, seed: int = 0) -> Path:
    """Fit on the training split (harmonised to the cohort's intensity standard, plus
    `config.acquisition_copies` acquisition-augmented copies of every scan, seeded from
    `seed`) and calibrate on the harmonised validation split."""
    config = config or ZScoreConfig()
    cohort = Path(cohort_dir)
    train, validation = load_split(cohort, "train"), load_split(cohort, "validation")
    if config.age_adjusted:
        keep = [k for k, age in enumerate(train.ages) if age is not None]
        train = CohortSplit([train.images[k] for k in keep], [train.masks[k] for k in keep],
                            [train.rows[k] for k in keep])
    log = [f"zscore training on {cohort}: {len(train.rows)} train, {len(validation.rows)} "
           f"validation subjects; config {asdict(config)}; augmentation seed {seed}"]
    start = time.perf_counter()
    grid = cohort_grid(cohort)
    standard, (fitted, validation) = fit_cohort_standard(
        train, [train, validation], grid, harmonisation)
    log.append(f"intensity standard: {asdict(standard.config)}; healthy ranges "
               f"{standard.healthy_ranges}")
    if config.acquisition_copies:
        augmented = harmonised_split(augmented_split(train, config.acquisition_copies, seed),
                                     standard)
        fitted = fitted.joined(augmented)
    ages = [float(age) for age in fitted.ages] if config.age_adjusted else None
    model = VoxelNormativeModel.fit(fitted.images, fitted.masks, ages, config)
    del fitted
    val_maps = [model.anomaly_map(image, mask, Subject(age)) for image, mask, age in
                zip(validation.images, validation.masks, validation.ages, strict=True)]
    calibration = Calibration.from_healthy_maps(val_maps, validation.masks, fpr,
                                                INDEX_TOP_FRACTION)
    flagged = sum(int((m > calibration.threshold).sum()) for m in val_maps)
    seconds = time.perf_counter() - start
    healthy_fpr = flagged / sum(int(m.sum()) for m in validation.masks)
    log += [f"fit and calibration: {seconds:.1f} s",
            f"healthy-calibrated threshold (|z|) at {fpr:.1%}: {calibration.threshold:.4f}; "
            f"realised validation healthy FPR {healthy_fpr:.5f}; per-subject range "
            f"{calibration.healthy_flagged_range}",
            f"abnormality index of healthy validation subjects: mean "
            f"{calibration.reference.index_mean:.3f}, std {calibration.reference.index_std:.3f}"]
    with atomic_output_folder(out) as staging:
        model.save(staging)
        calibration.save(staging)
        standard.save(staging)
        (staging / "training.log").write_text("\n".join(log) + "\n")
        write_manifest(
            staging, id="zscore-ixi-2mm", method="zscore", version="2", contrast="t1",
            description="Voxel-wise normative T1 intensity model (mean, std, linear age term) "
                        "on the 2 mm MNI grid, trained on healthy IXI subjects harmonised to "
                        "their intensity standard, with acquisition-augmented copies.",
            licence="CC BY-SA 3.0, as the IXI data it is derived from",
            covariates=["age"] if config.age_adjusted else [],
            grid=(grid or GridSpec()).to_dict(), config=asdict(config),
            intensity_standard={"file": "intensity_standard.json",
                                "config": asdict(standard.config)},
            augmentation={"config": asdict(AcquisitionConfig()), "seed": seed,
                          "copies_per_subject": config.acquisition_copies},
            training_data={"cohort": str(cohort.resolve()), "dataset": "IXI (CC BY-SA 3.0)",
                           "train": train.subjects, "validation": validation.subjects},
            calibration={"threshold": calibration.threshold, "healthy_fpr_target": fpr,
                         "index_top_fraction": INDEX_TOP_FRACTION,
                         "healthy_flagged_range": calibration.healthy_flagged_range},
            metrics={"validation_healthy_fpr_at_threshold": healthy_fpr,
                     "validation_abnormality_index_mean": calibration.reference.index_mean,
                     "validation_abnormality_index_std": calibration.reference.index_std,
                     "training_seconds": round(seconds, 1)},
        )
    return Path(out)

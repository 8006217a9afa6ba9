"""Assembling the CADD bundle: both trained stages, the healthy validation cohort's KL
percentiles (per level and latent position, with and without covariates), and one healthy
calibration per variant (CADD and its baselines and ablations)."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..evaluation.metrics import mae_psnr_ssim
from ..methods.base import HEALTHY_FPR, INDEX_TOP_FRACTION, Calibration
from ..methods.cadd import VARIANTS, CADDSettings, cohort_kl_percentiles, load_cadd
from ..methods.kl_table import save_percentiles
from ..subject import Subject
from .autoencoder import reconstruction_quality
from .data import load_split
from .harmonisation import cohort_grid, fit_cohort_standard
from .provenance import CHECKPOINT, write_manifest


def build_cadd_bundle(cohort_dir: str | os.PathLike, autoencoder_dir: str | os.PathLike,
                      transformer_dir: str | os.PathLike, out: str | os.PathLike,
                      settings: CADDSettings | None = None,
                      variants: list[str] | None = None, device: str = "cpu",
                      log=print) -> Path:
    """Copy both stages into `out` and compute, on the healthy validation split of
    `cohort_dir` (a cohort folder or its grid pack), the KL percentiles and every variant's
    calibration and reconstruction figures."""
    settings = settings or CADDSettings()
    variants = variants or list(VARIANTS)
    lines: list[str] = []

    def record(message: str) -> None:  # the bundle keeps its own log
        lines.append(message)
        log(message)

    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise UsageError(f"Unknown CADD variant(s) {', '.join(sorted(unknown))}; choose from "
                         f"{', '.join(VARIANTS)}.")
    cohort, out = Path(cohort_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, source in (("autoencoder", autoencoder_dir), ("transformer", transformer_dir)):
        target = out / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target, ignore=shutil.ignore_patterns(CHECKPOINT))
    # The shared path: validation scans harmonised to the training cohort's intensity standard,
    # which the bundle carries (as every method's input will be).
    train, validation = load_split(cohort, "train"), load_split(cohort, "validation")
    standard, (_, validation) = fit_cohort_standard(train, [train, validation],
                                                    cohort_grid(cohort))
    del train
    standard.save(out)
    images, masks, subjects = validation.images, validation.masks, validation.subjects
    people = [Subject(age, sex) for age, sex in zip(validation.ages, validation.sexes,
                                                    strict=True)]

    start = time.perf_counter()
    # the two stages, loaded once for every variant
    trained = load_cadd(out, "cadd", asdict(settings)).to(device)
    latents = [trained.encode(image) for image in images]
    percentiles = cohort_kl_percentiles(trained, latents, people)
    save_percentiles(percentiles, out)
    record(f"validation KL percentiles: {time.perf_counter() - start:.1f} s")

    # Each variant's calibration is kept as it finishes, with its figures in the checkpoint
    # folder, so that an interrupted run resumes with the variants still to do.
    finished = out / CHECKPOINT
    finished.mkdir(exist_ok=True)

    def resumed(name: str) -> dict | None:
        figures = finished / f"metrics_{name}.json"
        calibrated = name == "autoencoder" or (out / f"calibration_{name}.json").is_file()
        return json.loads(figures.read_text()) if figures.is_file() and calibrated else None

    # The first stage alone: encode and decode, the floor of every variant's reconstruction.
    metrics = {"autoencoder": resumed("autoencoder") or reconstruction_quality(
        trained.autoencoder, images, masks, device)}
    (finished / "metrics_autoencoder.json").write_text(json.dumps(metrics["autoencoder"]))
    record(f"autoencoder: healthy validation reconstruction {metrics['autoencoder']}")
    for variant in variants:
        if (earlier := resumed(variant)) is not None:
            metrics[variant] = earlier
            record(f"{variant}: healthy validation reconstruction {earlier} (resumed)")
            continue
        start = time.perf_counter()
        model = replace(trained, variant=VARIANTS[variant], cohort_percentiles=percentiles)
        maps, healthy = zip(*(model.predict(image, mask, person)
                              for image, mask, person in zip(images, masks, people, strict=True)),
                            strict=True)
        Calibration.from_healthy_maps(list(maps), masks, HEALTHY_FPR, INDEX_TOP_FRACTION).save(
            out, f"calibration_{variant}")
        quality = [mae_psnr_ssim(h, image, mask) for h, image, mask in zip(healthy, images,
                                                                           masks, strict=True)]
        metrics[variant] = {key: float(np.mean([q[key] for q in quality]))
                            for key in quality[0]}
        metrics[variant]["seconds_per_subject"] = (time.perf_counter() - start) / len(images)
        (finished / f"metrics_{variant}.json").write_text(json.dumps(metrics[variant]))
        record(f"{variant}: healthy validation reconstruction {metrics[variant]}")
    (out / "calibration.log").write_text("\n".join(lines) + "\n")
    write_manifest(out, id="cadd-ixi-2mm", method="cadd", variants=variants, version="1",
                   contrast="t1", covariates=["age", "sex"], inference=asdict(settings),
                   device=device,
                   intensity_standard={"file": "intensity_standard.json",
                                       "config": asdict(standard.config)},
                   training_data={"cohort": cohort.name, "validation": subjects},
                   metrics={"validation_reconstruction": metrics},
                   licence="CC BY-SA 3.0, as the IXI data it is derived from")
    return out

"""Assembling the CADD bundle: both trained stages, the healthy validation cohort's KL
percentiles (per level and latent position, with and without covariates), and one healthy
calibration per variant (CADD and its baselines and ablations)."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from ..cohort import read_manifest
from ..diffusion.inpainting import InpaintingSettings
from ..evaluation.metrics import mae_psnr_ssim
from ..methods.base import Calibration
from ..methods.cadd import PERCENTILES_FILE, VARIANTS, cohort_kl_percentiles, load_cadd
from ..postprocessing import ReferenceStatistics, healthy_calibrated_threshold
from .autoencoder import load_split
from .provenance import write_manifest
from .zscore import HEALTHY_FPR, INDEX_TOP_FRACTION


def build_cadd_bundle(cohort_dir: str | os.PathLike, autoencoder_dir: str | os.PathLike,
                      transformer_dir: str | os.PathLike, out: str | os.PathLike,
                      settings: InpaintingSettings | None = None,
                      variants: list[str] | None = None, log=print) -> Path:
    from safetensors.torch import save_file

    settings = settings or InpaintingSettings()
    variants = variants or list(VARIANTS)
    cohort, out = Path(cohort_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, source in (("autoencoder", autoencoder_dir), ("transformer", transformer_dir)):
        target = out / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("checkpoint"))
    images, masks, subjects = load_split(cohort, "validation")
    rows = {r["subject"]: r for r in read_manifest(cohort)}
    ages = [float(rows[s]["age"]) if rows[s]["age"] else None for s in subjects]
    sexes = [rows[s]["sex"] or None for s in subjects]

    start = time.perf_counter()
    trained = load_cadd(out, "cadd", settings)  # the two stages, loaded once for every variant
    percentiles = {}
    for key, variant in (("covariates", "cadd"), ("none", "cadd_nocov")):
        model = replace(trained, variant=VARIANTS[variant])
        percentiles[key] = cohort_kl_percentiles(model, images, ages, sexes,
                                                 settings.percentile).contiguous()
    save_file(percentiles, str(out / PERCENTILES_FILE))
    log(f"validation KL percentiles: {time.perf_counter() - start:.1f} s")

    metrics = {}
    for variant in variants:
        start = time.perf_counter()
        model = replace(trained, variant=VARIANTS[variant], cohort_percentiles=percentiles)
        healthy = [model.pseudo_healthy(image, mask, age, sex)
                   for image, mask, age, sex in zip(images, masks, ages, sexes, strict=True)]
        maps = [np.abs(image - h) * mask for image, h, mask in zip(images, healthy, masks,
                                                                     strict=True)]
        Calibration(healthy_calibrated_threshold(maps, masks, HEALTHY_FPR), HEALTHY_FPR,
                    ReferenceStatistics.from_healthy_maps(maps, masks, INDEX_TOP_FRACTION)
                    ).save(out, f"calibration_{variant}")
        quality = [mae_psnr_ssim(h, image, mask) for h, image, mask in zip(healthy, images,
                                                                           masks, strict=True)]
        metrics[variant] = {key: float(np.mean([q[key] for q in quality]))
                            for key in quality[0]}
        metrics[variant]["seconds_per_subject"] = (time.perf_counter() - start) / len(images)
        log(f"{variant}: healthy validation reconstruction {metrics[variant]}")
    write_manifest(out, id="cadd-ixi-2mm", method="cadd", variants=variants, version="1",
                   contrast="t1", covariates=["age", "sex"], inference=asdict(settings),
                   training_data={"cohort": str(cohort.resolve()), "validation": subjects},
                   metrics={"validation_reconstruction": metrics},
                   licence="CC BY-SA 3.0, as the IXI data it is derived from")
    return out

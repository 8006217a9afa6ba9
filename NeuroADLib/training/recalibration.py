"""Recalibrating a trained bundle without retraining it (`neuroad calibrate`): one method's
label-free calibration (its 1% healthy threshold, the normative statistics and threshold of
its map) measured again on healthy scans, at other inference options or on another healthy
cohort (a site's own controls, scanned on its own scanner), and written as a new bundle.

The weights, the intensity standard and every other method's calibration are copied as they
are; the method's inference options, when given, become the bundle's (what it runs with by
default, and what a report checks a run's options against); the manifest records the
recalibration (cohort, subjects, options, command, code version, the calibration it replaced)
and the new files' hashes. Benchmark figures measured with the old calibration move into
that record: they no longer describe the bundle.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..errors import InputError, ModelError, OptionError, UsageError
from ..evaluation.metrics import mae_psnr_ssim
from ..methods.base import (
    REFERENCE_SMOOTHING_SIGMA,
    Calibration,
    calibrated_options,
    load_method,
)
from ..methods.registry import METHODS, validate_options
from ..models.bundles import CHECKPOINT, MANIFEST, Bundle, verify_bundle
from ..outputs import atomic_output_folder
from ..subject import Subject
from .data import CohortSplit, load_split
from .provenance import code_version, command_line, file_entry

SPLITS = {"validation": ("validation",), "all": ("train", "validation")}
# The normative threshold is taken leave-one-out, which needs two other healthy maps.
MIN_SCANS_FOR_NORMATIVE = 3


@dataclass(frozen=True)
class RecalibrationResult:
    """The new bundle, its calibration of the method and the healthy scans' figures."""

    folder: Path
    calibration: Calibration
    reconstruction: dict[str, float]  # mean MAE / PSNR / SSIM of the pseudo-healthy images
    seconds_per_scan: float
    subjects: list[str]


def recalibrate(method: str, bundle: str | os.PathLike, cohort: str | os.PathLike,
                out: str | os.PathLike, options: dict | None = None, split: str = "validation",
                device: str = "cpu", log=print,
                smoothing_sigma: float | None = None) -> RecalibrationResult:
    """Recalibrate `method` of the bundle in `bundle` on the healthy scans of a prepared
    `cohort` (`split`: "validation", or "all" for a cohort of controls that trains nothing),
    at the bundle's inference options with `options` over them; the new bundle is written to
    `out`, a new folder, all at once (nothing is written on failure). `smoothing_sigma`: the
    variance smoothing (voxels) of the healthy statistics behind normative maps; None keeps
    the bundle's own (see `own_smoothing_sigma`)."""
    if method not in METHODS:
        raise ModelError(f"Unknown method {method!r}; available: {', '.join(METHODS)}.")
    owner = _calibration_owner(method)
    if owner != method:
        raise UsageError(f"{method} is thresholded by {owner}'s calibration: recalibrate "
                         f"{owner}.")
    if split not in SPLITS:
        raise UsageError(f"Unknown split {split!r}: use {' or '.join(SPLITS)}.")
    if smoothing_sigma is not None and not (np.isfinite(smoothing_sigma)
                                            and smoothing_sigma >= 0):
        raise UsageError(f"The smoothing sigma must be a number of voxels >= 0, not "
                         f"{smoothing_sigma}.")
    try:
        options = validate_options(method, options)
    except ValueError as error:
        raise OptionError(str(error)) from None
    source, out = Path(bundle), Path(out)
    if out.exists():
        raise UsageError(f"{out} exists: give --out a new folder (the recalibrated bundle is "
                         "written beside the original, never over it).")
    manifest = _read_bundle(source, method)
    scans = _healthy_scans(cohort, split)
    previous = Calibration.load(source, METHODS[method].calibration)
    if smoothing_sigma is None:
        smoothing_sigma = own_smoothing_sigma(previous)
    if previous.map_kind == "normative" and len(scans.rows) < MIN_SCANS_FOR_NORMATIVE:
        raise InputError(f"{method} outputs normative maps, whose calibration needs at least "
                         f"{MIN_SCANS_FOR_NORMATIVE} healthy scans; the cohort's {split} "
                         f"scans are {len(scans.rows)}.")
    before = {**METHODS[method].options, **calibrated_options(manifest, method)}
    manifest["inference"] = _with_options(manifest, method, options)
    with atomic_output_folder(out) as staging:
        shutil.copytree(source, staging, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(CHECKPOINT))
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, default=float))
        loaded = load_method(method, staging).to(device)
        described = manifest.get("anomaly_maps", {}).get(method)
        if isinstance(described, dict) and hasattr(loaded.model, "map_formula"):
            described["formula"] = loaded.model.map_formula  # the post-processing may change
        start = time.perf_counter()
        maps, figures = [], []
        for k, (image, mask) in enumerate(zip(scans.images, scans.masks, strict=True)):
            harmonised, _, _ = loaded.harmonise(image, mask)
            anomaly, healthy = loaded.model.predict(harmonised, mask, _subject(scans, k))
            maps.append(anomaly)
            figures.append(mae_psnr_ssim(healthy, harmonised, mask))
            log(f"{method}: {scans.subjects[k]} ({k + 1}/{len(scans.rows)})")
        seconds = (time.perf_counter() - start) / len(maps)
        calibration = Calibration.from_healthy_maps(
            maps, scans.masks, previous.fpr, previous.reference.top_fraction, previous.map_kind,
            smoothing_sigma)
        calibration.save(staging, METHODS[method].calibration)
        reconstruction = {key: float(np.mean([f[key] for f in figures])) for key in figures[0]}
        _record(staging, manifest, method, {
            "cohort": str(Path(cohort).resolve()), "split": split,
            "subjects": scans.subjects, "options": {**before, **options},
            "map": calibration.map_kind, "threshold": calibration.output_threshold,
            "smoothing_sigma": calibration.smoothing_sigma,
            "healthy_flagged_range": calibration.output_flagged_range,
            "pseudo_healthy_reconstruction": reconstruction,
            "seconds_per_scan": round(seconds, 1),
            "replaced": {"options": before, "threshold": previous.output_threshold,
                         "smoothing_sigma": previous.smoothing_sigma,
                         "healthy_flagged_range": previous.output_flagged_range}},
                calibration)
    log(f"{method}: threshold {calibration.output_threshold:.4g} ({calibration.map_kind} map; "
        f"was {previous.output_threshold:.4g}), healthy flagged "
        f"{calibration.output_flagged_range}; wrote {out}")
    return RecalibrationResult(out, calibration, reconstruction, seconds, scans.subjects)


def own_smoothing_sigma(calibration: Calibration) -> float:
    """The variance smoothing a recalibration keeps by default: the calibration's own where it
    smoothed (a bundle whose figures chose another sigma keeps it), the reference sigma every
    training uses where it was made before smoothing (recorded as 0)."""
    if calibration.smoothing_sigma > 0:
        return calibration.smoothing_sigma
    return REFERENCE_SMOOTHING_SIGMA


def _read_bundle(folder: Path, method: str) -> dict:
    """The manifest of a bundle that verifies and serves `method`; ModelError otherwise."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise ModelError(f"{folder} is not a model bundle (no {MANIFEST}): give --model the "
                         "folder of a trained bundle.")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelError(f"{manifest_path} is not readable JSON ({error}).") from None
    verify_bundle(Bundle(folder, manifest))
    served = [manifest.get("method"), *manifest.get("variants", [])]
    if method not in served:
        raise ModelError(f"The bundle in {folder} serves {', '.join(map(str, served))}, not "
                         f"{method}.")
    return manifest


def _healthy_scans(cohort: str | os.PathLike, split: str) -> CohortSplit:
    """The healthy scans of the cohort's `split`; InputError when there are too few."""
    if not Path(cohort).exists():
        raise InputError(f"Cohort {cohort} does not exist: give --cohort a folder written by "
                         "`neuroad prepare-cohort` (or its grid pack).")
    parts = [load_split(cohort, name) for name in SPLITS[split]]
    scans = CohortSplit([i for p in parts for i in p.images], [m for p in parts for m in p.masks],
                        [r for p in parts for r in p.rows])
    if not scans.rows:
        raise InputError(f"Cohort {cohort} has no {split} scans to calibrate on.")
    return scans


def _calibration_owner(method: str) -> str:
    """The method whose calibration `method` uses (itself, unless it borrows another's)."""
    stem = METHODS[method].calibration
    return next((name for name in METHODS if stem == f"calibration_{name}"), method)


def _subject(scans: CohortSplit, k: int) -> Subject:
    return Subject(scans.ages[k], scans.sexes[k])


def _with_options(manifest: dict, method: str, options: dict) -> dict:
    """The manifest's inference settings with `options` for `method` and the bundle's methods
    thresholded by its calibration (the longitudinal method by `sdm_fam`'s): in the shared
    settings where no other method of the bundle uses them; otherwise as each of those
    methods' own settings (`inference[name]`, over the shared ones: see `method_settings`), so
    that the other methods keep the settings their calibrations were made at."""
    inference = dict(manifest.get("inference", {}))
    if not options:
        return inference
    served = {manifest.get("method"), *manifest.get("variants", [])} - {None}
    calibration = METHODS[method].calibration
    sharing = {method} | {name for name in served
                          if name in METHODS and METHODS[name].calibration == calibration}
    if any(isinstance(inference.get(name), dict) for name in sharing) or served - sharing:
        return {**inference, **{name: {**inference.get(name, {}), **options}
                                for name in sorted(sharing)}}
    return {**inference, **options}


def _record(folder: Path, manifest: dict, method: str, record: dict,
            calibration: Calibration) -> None:
    """The manifest of the recalibrated bundle: the recalibration's record (with the
    benchmark figures measured under the calibration it replaced), the new calibration's
    summary where the method is the bundle's own, and the new files' hashes."""
    name = METHODS[method].calibration
    superseded = {}
    figures = manifest.get("benchmark", {}).get("figures", {})
    if method in figures:
        superseded["benchmark"] = figures.pop(method)
    if name in manifest.get("map_choice", {}):
        superseded["map_choice"] = manifest["map_choice"].pop(name)
    manifest.setdefault("recalibrations", []).append({
        "method": method, "calibration": name, **record,
        "superseded_figures": superseded, "command": command_line(),
        "code_version": code_version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    if manifest.get("method") == method:
        manifest["calibration"] = {**manifest.get("calibration", {}),
                                   "threshold": calibration.threshold,
                                   "healthy_flagged_range": calibration.healthy_flagged_range}
        metrics = manifest.setdefault("metrics", {})
        metrics["pseudo_healthy_validation_reconstruction"] = record[
            "pseudo_healthy_reconstruction"]
        metrics["seconds_per_validation_scan"] = record["seconds_per_scan"]
    for file in (f"{name}.json", f"{name}.safetensors"):
        manifest["files"][file] = file_entry(folder / file)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, default=float))

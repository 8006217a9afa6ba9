"""`neuroad impute`: a plausible follow-up of a scan at a later age, by TDM (the longitudinal
report, chapter 6).

The scan goes onto the model grid, TDM samples the change from its age to the later one over
the brain's axial slices, and the change goes back onto the scan's own geometry and intensity
scale, where it is added to the scan: `imputed.nii.gz` is the scan with that change inside the
brain and keeps the scan's own resolution; `change.nii.gz` is the change alone. The bundled TDM
learnt healthy ageing as the cohort's cross-section shows it (see the README): it imputes a
plausible healthy follow-up, not a prediction of a lesion's course.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import __version__
from .device import select_device
from .errors import InputError, OptionError
from .guards import check_run
from .methods.registry import TDM_OPTION_SPECS
from .models import find_bundle, verify_bundle
from .outputs import atomic_output_folder, check_writable
from .pipeline import change_on_scan, check_covariates, prepare_scan
from .preprocessing.pipeline import PREPROCESS_STEPS
from .progress import Progress
from .volumes import write_volume

TDM_METHOD = "tdm"  # the bundles' method name


def check_tdm_options(options: dict | None) -> dict:
    """TDM's sampling options as their types; OptionError naming what is valid otherwise."""
    checked = {}
    for key, value in (options or {}).items():
        if key not in TDM_OPTION_SPECS:
            raise OptionError(f"TDM has no option {key}; its options: "
                              f"{', '.join(TDM_OPTION_SPECS)}.")
        try:
            checked[key] = TDM_OPTION_SPECS[key].check(f"tdm.{key}", value)
        except ValueError as error:
            raise OptionError(str(error)) from error
    return checked


def check_target_age(age: float, to_age: float | None) -> float:
    """The age to impute at: a plausible age after the scan's."""
    if to_age is None or not np.isfinite(to_age) or not 0 <= to_age <= 120:
        raise InputError(f"The age to impute at ({to_age}) must be a number of years, 0-120.")
    if to_age <= age:
        raise InputError(f"TDM imputes a later visit: --to-age {to_age:g} is not after the "
                         f"scan's age {age:g}.")
    return float(to_age)


def load_tdm_bundle(options: dict | None = None):
    """(verified bundle, TDMModel) of the first TDM bundle of the store or the package."""
    from .methods.tdm import load_tdm

    bundle = find_bundle(TDM_METHOD)
    verify_bundle(bundle)
    return bundle, load_tdm(bundle.folder, options)


def impute_scan(source: str | os.PathLike, age: float, to_age: float, sex: str,
                out: str | os.PathLike, brain_mask: str | os.PathLike | None = None,
                seed: int = 0, progress: Progress | None = None, device: str = "auto",
                options: dict | None = None, staging_dir: str | os.PathLike | None = None
                ) -> dict:
    """Impute the scan at `to_age` and write `out`/imputed.nii.gz, change.nii.gz and
    report.json, whole or not at all; returns the report. `seed` seeds the registration,
    `options` TDM's sampling (steps, eta, seed)."""
    subject = check_covariates(age, sex)
    to_age = check_target_age(subject.age, to_age)
    options = check_tdm_options(options)
    check_run(source, [], brain_mask)  # the scan and mask guards, before any work
    chosen = select_device(device)
    check_writable(out)
    progress = progress or Progress()
    progress.total = 1 + PREPROCESS_STEPS + 3
    progress.step("load TDM")
    timings = {}
    start = time.perf_counter()
    bundle, model = load_tdm_bundle(options)
    timings["load_model"] = time.perf_counter() - start
    scan = prepare_scan(source, brain_mask, seed, progress)
    timings["preprocess"] = scan.preprocess_s

    progress.step(f"TDM: imputing age {to_age:g}")
    start = time.perf_counter()
    grid_image, brain = scan.grid_image, scan.brain
    imputed = model.to(chosen).impute(grid_image, brain, subject.age, to_age, progress.substep)
    grid_change = imputed - grid_image
    timings["tdm"] = time.perf_counter() - start

    progress.step("back to the scan")
    start = time.perf_counter()
    change = change_on_scan(scan.case, scan.native, grid_change)
    followed = sitk.Add(sitk.Cast(scan.native, sitk.sitkFloat32), change)
    timings["to_native"] = time.perf_counter() - start

    progress.step("writing")
    report = {
        "neuroad_version": __version__,
        "input": scan.input_info,
        "covariates": {"age": subject.age, "sex": subject.sex},
        "imputed_age": to_age,
        "gap_years": to_age - subject.age,
        "method": TDM_METHOD,
        "options": options,
        "settings": {"steps": model.settings.steps, "eta": model.settings.eta,
                     "seed": model.settings.seed},
        "model": {"id": bundle.id, "folder": str(bundle.folder),
                  "sha256": {k: v["sha256"] for k, v in bundle.manifest["files"].items()},
                  "trained_on": bundle.manifest.get("training_data", {}).get("pairs", "")},
        "device": {"used": chosen, "asked": device},
        "change_in_brain": {"mean": float(grid_change[brain].mean()),
                            "mean_absolute": float(np.abs(grid_change[brain]).mean()),
                            "unit": "the grid's normalised intensity"},
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "preprocessing": scan.case.report,
        "outputs": ["imputed.nii.gz", "change.nii.gz"],
    }
    with atomic_output_folder(out, staging_dir) as staging:
        write_volume(followed, staging / "imputed.nii.gz")
        write_volume(change, staging / "change.nii.gz")
        (Path(staging) / "report.json").write_text(json.dumps(report, indent=2, default=float))
    return report

"""The intensity standard of a training cohort, and cohort scans harmonised to it: shared by
every trainer, so that each bundle carries the standard its model was trained on.

Harmonising and augmenting are independent per scan (numpy and scipy, each augmentation seeded
by its own arguments), so a cohort's scans are spread over processes, one per available core,
with the same result as one after the other (a test); a handful of scans stays in-process,
where starting the processes would cost more than it saves.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError
from ..grid import GridSpec
from ..preprocessing.harmonisation import (
    STANDARD_JSON,
    HarmonisationConfig,
    IntensityStandard,
    healthy_medians,
    healthy_ranges,
)
from ..synthesis.acquisition import AcquisitionConfig, augment_acquisition
from .data import CohortSplit, load_split
from .provenance import code_version, command_line, file_entry

SCANS_PER_WORKER = 8  # fewer scans than this per process run in-process


def scan_workers(scans: int, workers: int | None = None) -> int:
    """How many processes prepare `scans` scans: `workers`, by default one per core this
    process may use, but at most one per SCANS_PER_WORKER scans."""
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
    return max(1, min(workers, scans // SCANS_PER_WORKER))


def map_scans(function: Callable, *arguments: Iterable, workers: int | None = None) -> list:
    """[function(*a) for a in zip(*arguments)], in order, over scan_workers processes
    (spawned: the caller may hold torch's threads, which a forked child must not inherit)."""
    arguments = [list(values) for values in arguments]
    if len({len(values) for values in arguments}) > 1:
        raise ValueError(f"map_scans needs as many of each argument; got "
                         f"{[len(values) for values in arguments]}")
    count = scan_workers(len(arguments[0]), workers)
    if count == 1:
        return list(map(function, *arguments))
    with ProcessPoolExecutor(count, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(function, *arguments, chunksize=2))


def fit_cohort_standard(train: CohortSplit, healthy: list[CohortSplit], grid: GridSpec | None,
                        config: HarmonisationConfig | None = None, workers: int | None = None
                        ) -> tuple[IntensityStandard, list[CohortSplit]]:
    """The intensity standard of the training scans, with the healthy range of every
    out-of-distribution statistic over all `healthy` splits (training and validation), and
    those splits harmonised to it (each scan harmonised once). The tissue cores come from the
    grid's template; with `grid` None (a cohort that does not say its grid), from the training
    scans themselves."""
    priors = None
    if grid is not None:
        from ..templates import template_tissue_priors

        priors = template_tissue_priors(grid)
    spacing = float(grid.spacing[0]) if grid is not None else 2.0
    standard = IntensityStandard.fit(train.images, train.masks, spacing, priors, config)
    done = map_scans(functools.partial(_harmonised_and_measured, standard),
                     [image for split in healthy for image in split.images],
                     [mask for split in healthy for mask in split.masks], workers=workers)
    harmonised_splits, start = [], 0
    for split in healthy:
        images = [harmonised for harmonised, _ in done[start:start + len(split.images)]]
        harmonised_splits.append(CohortSplit(images, split.masks, split.rows))
        start += len(split.images)
    statistics = [measured for _, measured in done]
    return (standard.with_healthy_ranges(healthy_ranges(statistics), healthy_medians(statistics)),
            harmonised_splits)


def _harmonised_and_measured(standard: IntensityStandard, image, mask) -> tuple:
    """(the scan harmonised to the standard, its out-of-distribution statistics)."""
    harmonised, gain = standard.harmonise(image, mask)
    return harmonised, standard.statistics(image, harmonised, mask, gain)


def cohort_grid(cohort: str | os.PathLike) -> GridSpec | None:
    """The grid a prepared cohort folder says it is on (cohort.json), or None."""
    manifest = Path(cohort) / "cohort.json"
    if Path(cohort).is_dir() and manifest.is_file():
        return GridSpec.from_dict(json.loads(manifest.read_text())["grid"])
    return None


def harmonised_split(split: CohortSplit, standard: IntensityStandard,
                     workers: int | None = None) -> CohortSplit:
    """The split's scans harmonised to the standard (masks and rows unchanged)."""
    done = map_scans(standard.harmonise, split.images, split.masks, workers=workers)
    return CohortSplit([harmonised for harmonised, _ in done], split.masks, split.rows)


def augmented_split(split: CohortSplit, copies: int, seed: int,
                    config: AcquisitionConfig | None = None, workers: int | None = None
                    ) -> CohortSplit:
    """`copies` acquisition-augmented versions of every scan (seed + subject index * copies +
    copy), before harmonisation, with the rows repeated alongside."""
    order = [(index, copy) for index in range(len(split.images)) for copy in range(copies)]
    masks = [split.masks[index] for index, _ in order]
    done = map_scans(functools.partial(augment_acquisition, config=config),
                     [split.images[index] for index, _ in order], masks,
                     [seed + index * copies + copy for index, copy in order], workers=workers)
    return CohortSplit([augmented for augmented, _ in done], masks,
                       [split.rows[index] for index, _ in order])


@dataclass
class TrainingCohort:
    """What a trainer trains and validates on: the training scans (with their augmented
    copies, rows repeated alongside), the validation split, the intensity standard both were
    harmonised to (None: as stored), and the training subjects."""

    train: CohortSplit
    validation: CohortSplit
    standard: IntensityStandard | None
    train_subjects: list[str]


def harmonised_cohort(cohort: Path, copies: int, seed: int, log: Callable = print,
                      workers: int | None = None) -> TrainingCohort:
    """The cohort's training scans harmonised to their intensity standard (+ `copies`
    augmented copies each, augmented before harmonisation, as a scan from another scanner
    arrives), its harmonised validation split, and the standard; the scans spread over
    `workers` processes (default: one per core)."""
    began = time.perf_counter()
    train, validation = load_split(cohort, "train"), load_split(cohort, "validation")
    standard, (fitted, validation) = fit_cohort_standard(train, [train, validation],
                                                         cohort_grid(cohort), workers=workers)
    if copies:
        augmented = harmonised_split(augmented_split(train, copies, seed, workers=workers),
                                     standard, workers=workers)
        fitted = fitted.joined(augmented)
    log(f"{len(train.rows)} training scans harmonised with {copies} augmented copies each, "
        f"{len(validation.rows)} validation scans: {time.perf_counter() - began:.0f} s")
    return TrainingCohort(fitted, validation, standard, train.subjects)


def stored_cohort(cohort: Path, copies: int, seed: int) -> TrainingCohort:
    """The cohort's scans as stored, not harmonised (models that predate harmonisation),
    with `copies` augmented copies of each training scan."""
    train = load_split(cohort, "train")
    pool = train.joined(augmented_split(train, copies, seed)) if copies else train
    return TrainingCohort(pool, load_split(cohort, "validation"), None, train.subjects)


def training_cohort(cohort: Path, harmonise: bool, copies: int, seed: int,
                    log: Callable = print) -> TrainingCohort:
    """`harmonised_cohort` or, for a model trained on scans as stored, `stored_cohort`."""
    if harmonise:
        return harmonised_cohort(cohort, copies, seed, log)
    return stored_cohort(cohort, copies, seed)


def complete_healthy_ranges(bundle: str | os.PathLike, cohort: str | os.PathLike
                            ) -> tuple[dict, dict]:
    """Add to a bundle's intensity standard the healthy range and median of every
    out-of-distribution statistic it lacks (one added to the code after the bundle was built,
    such as the noise level or the sharpness), measured as the trainers measure them: on the
    cohort's training and validation scans, harmonised to the standard before any range
    exists. What the standard has, its reference, the model and its calibration stay as they
    are; the manifest adds to its list of `ranges_added` what was added and how, and records
    the new file hashes. Returns (the added ranges, the added medians)."""
    bundle = Path(bundle)
    standard = IntensityStandard.load(bundle)
    if standard is None or not (bundle / "manifest.json").is_file():
        raise ModelError(f"{bundle} is not a bundle with an intensity standard "
                         f"({STANDARD_JSON} and manifest.json): give --out the folder of a "
                         "trained bundle.")
    measuring = standard.with_healthy_ranges({}, {})  # as the trainers saw the cohort
    statistics = []
    for split in ("train", "validation"):
        scans = load_split(cohort, split)
        statistics += [_harmonised_and_measured(measuring, image, mask)[1]
                       for image, mask in zip(scans.images, scans.masks, strict=True)]
    added = {key: span for key, span in healthy_ranges(statistics).items()
             if key not in standard.healthy_ranges}
    medians = {key: value for key, value in healthy_medians(statistics).items()
               if key not in standard.healthy_medians}
    if not added and not medians:
        return added, medians
    standard.with_healthy_ranges({**standard.healthy_ranges, **added},
                                 {**standard.healthy_medians, **medians}).save(bundle)
    manifest_path = bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    record = manifest.setdefault("intensity_standard", {})
    earlier = record.get("ranges_added", [])
    record["ranges_added"] = [*([earlier] if isinstance(earlier, dict) else earlier), {
        "statistics": added, "medians": medians, "scans": len(statistics),
        "cohort": str(cohort), "command": command_line(), "code_version": code_version()}]
    manifest["files"][STANDARD_JSON] = file_entry(bundle / STANDARD_JSON)
    manifest_path.write_text(json.dumps(manifest, indent=2, default=float))
    return added, medians

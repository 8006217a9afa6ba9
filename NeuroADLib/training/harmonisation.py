"""The intensity standard of a training cohort, and cohort scans harmonised to it: shared by
every trainer, so that each bundle carries the standard its model was trained on."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import ModelError
from ..grid import GridSpec
from ..preprocessing.harmonisation import (
    STANDARD_JSON,
    HarmonisationConfig,
    IntensityStandard,
    healthy_ranges,
)
from ..synthesis.acquisition import AcquisitionConfig, augment_acquisition
from .data import CohortSplit, load_split
from .provenance import code_version, command_line, file_entry


def fit_cohort_standard(train: CohortSplit, healthy: list[CohortSplit], grid: GridSpec | None,
                        config: HarmonisationConfig | None = None
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
    statistics, harmonised_splits = [], []
    for split in healthy:
        images = []
        for image, mask in zip(split.images, split.masks, strict=True):
            harmonised, measured = _harmonised_and_measured(standard, image, mask)
            statistics.append(measured)
            images.append(harmonised)
        harmonised_splits.append(CohortSplit(images, split.masks, split.rows))
    return standard.with_healthy_ranges(healthy_ranges(statistics)), harmonised_splits


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


def harmonised_split(split: CohortSplit, standard: IntensityStandard) -> CohortSplit:
    """The split's scans harmonised to the standard (masks and rows unchanged)."""
    images = [standard.harmonise(image, mask)[0] for image, mask in
              zip(split.images, split.masks, strict=True)]
    return CohortSplit(images, split.masks, split.rows)


def augmented_split(split: CohortSplit, copies: int, seed: int,
                    config: AcquisitionConfig | None = None) -> CohortSplit:
    """`copies` acquisition-augmented versions of every scan (seed + subject index * copies +
    copy), before harmonisation, with the rows repeated alongside."""
    images, masks, rows = [], [], []
    for index, (image, mask, row) in enumerate(zip(split.images, split.masks, split.rows,
                                                   strict=True)):
        for copy in range(copies):
            augmented, _ = augment_acquisition(image, mask, seed + index * copies + copy, config)
            images.append(augmented)
            masks.append(mask)
            rows.append(row)
    return CohortSplit(images, masks, rows)


def complete_healthy_ranges(bundle: str | os.PathLike, cohort: str | os.PathLike) -> dict:
    """Add to a bundle's intensity standard the healthy range of every out-of-distribution
    statistic it lacks (one added to the code after the bundle was built, such as the noise
    level), measured as the trainers measure them: on the cohort's training and validation
    scans, harmonised to the standard before any range exists. The ranges the standard has,
    its reference, the model and its calibration stay as they are; the manifest records what
    was added, how, and the new file hashes. Returns the added ranges."""
    bundle = Path(bundle)
    standard = IntensityStandard.load(bundle)
    if standard is None or not (bundle / "manifest.json").is_file():
        raise ModelError(f"{bundle} is not a bundle with an intensity standard "
                         f"({STANDARD_JSON} and manifest.json): give --out the folder of a "
                         "trained bundle.")
    measuring = standard.with_healthy_ranges({})  # as the trainers saw the cohort
    statistics = []
    for split in ("train", "validation"):
        scans = load_split(cohort, split)
        statistics += [_harmonised_and_measured(measuring, image, mask)[1]
                       for image, mask in zip(scans.images, scans.masks, strict=True)]
    added = {key: span for key, span in healthy_ranges(statistics).items()
             if key not in standard.healthy_ranges}
    standard.with_healthy_ranges({**standard.healthy_ranges, **added}).save(bundle)
    manifest_path = bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest.setdefault("intensity_standard", {})["ranges_added"] = {
        "statistics": added, "scans": len(statistics), "cohort": str(cohort),
        "command": command_line(),
        "code_version": code_version()}
    manifest["files"][STANDARD_JSON] = file_entry(bundle / STANDARD_JSON)
    manifest_path.write_text(json.dumps(manifest, indent=2, default=float))
    return added

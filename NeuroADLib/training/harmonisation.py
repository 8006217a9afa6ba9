"""The intensity standard of a training cohort, and cohort scans harmonised to it: shared by
every trainer, so that each bundle carries the standard its model was trained on."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..grid import GridSpec
from ..preprocessing.harmonisation import HarmonisationConfig, IntensityStandard, healthy_ranges
from ..synthesis.acquisition import AcquisitionConfig, augment_acquisition
from .data import CohortSplit


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
            harmonised, gain = standard.harmonise(image, mask)
            statistics.append(standard.statistics(image, harmonised, mask, gain))
            images.append(harmonised)
        harmonised_splits.append(CohortSplit(images, split.masks, split.rows))
    return standard.with_healthy_ranges(healthy_ranges(statistics)), harmonised_splits


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

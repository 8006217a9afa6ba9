"""The healthy cohort as training code sees it: the grid images, brain masks and covariates of
one split, read from a prepared cohort folder or from its grid pack (`neuroad pack`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..gridpack import is_pack, read_grid_file, read_pack


@dataclass
class CohortSplit:
    images: list[np.ndarray]
    masks: list[np.ndarray]
    rows: list[dict]  # subject, age, sex, split (age and sex may be empty strings)

    @property
    def subjects(self) -> list[str]:
        return [row["subject"] for row in self.rows]

    @property
    def ages(self) -> list[float | None]:
        return [float(row["age"]) if row["age"] else None for row in self.rows]

    @property
    def sexes(self) -> list[str | None]:
        return [row["sex"] if row["sex"] in ("F", "M") else None for row in self.rows]

    def joined(self, other: CohortSplit) -> CohortSplit:
        """This split's scans followed by `other`'s (augmented copies added to a pool)."""
        return CohortSplit(self.images + other.images, self.masks + other.masks,
                           self.rows + other.rows)


def load_split(cohort: str | os.PathLike, split: str) -> CohortSplit:
    """The subjects of `split` (train or validation), from a cohort folder or a grid pack."""
    if is_pack(cohort):
        pack = read_pack(cohort)
        picked = [k for k, row in enumerate(pack.rows) if row["split"] == split]
        return CohortSplit([pack.volume(k, "image") for k in picked],
                           [pack.volume(k, "brain_mask") for k in picked],
                           [pack.rows[k] for k in picked])
    from ..cohort import read_manifest

    cohort = Path(cohort)
    rows = [r for r in read_manifest(cohort) if r["split"] == split]
    images = [read_grid_file(cohort / r["image"]) for r in rows]
    masks = [read_grid_file(cohort / r["brain_mask"]) > 0 for r in rows]
    return CohortSplit(images, masks, rows)

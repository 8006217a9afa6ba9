"""The healthy cohort: a seeded, age-stratified split and a resumable cache."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import IXI, require

from NeuroADLib.cohort import (
    Subject,
    prepare_cohort,
    read_manifest,
    read_participants,
    split_subjects,
)


def synthetic_subjects(n=165, seed=3) -> list[Subject]:
    rng = np.random.default_rng(seed)
    subjects = [Subject(f"S{k:03d}", float(rng.uniform(20, 85)), "F" if k % 2 else "M", f"{k}.nii")
                for k in range(n)]
    subjects[0].age = subjects[1].age = None
    return subjects


def test_split_is_seeded_stratified_and_by_subject():
    first = [s.split for s in split_subjects(synthetic_subjects(), 0.15, seed=0)]
    again = [s.split for s in split_subjects(synthetic_subjects(), 0.15, seed=0)]
    other = [s.split for s in split_subjects(synthetic_subjects(), 0.15, seed=1)]
    assert first == again and first != other
    subjects = split_subjects(synthetic_subjects(), 0.15, seed=0)
    validation = [s for s in subjects if s.split == "validation"]
    assert 0.13 <= len(validation) / len(subjects) <= 0.17
    assert all(s.split == "train" for s in subjects if s.age is None)
    # Stratified: every age quintile of the aged subjects gives validation subjects.
    ages = np.array([s.age for s in subjects if s.age is not None])
    edges = np.quantile(ages, [0.2, 0.4, 0.6, 0.8])
    strata = np.digitize([s.age for s in validation], edges)
    assert set(strata) == {0, 1, 2, 3, 4}


def test_real_participants_table():
    subjects = read_participants(require(IXI))
    assert len(subjects) == 165
    assert sum(s.age is None for s in subjects) == 4
    assert {s.sex for s in subjects} == {"F", "M", None}


@pytest.mark.slow
def test_prepare_cohort_is_resumable(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = list(csv.DictReader((require(IXI) / "participants.csv").open()))[:3]
    with (data / "participants.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["subject", "age", "sex", "file"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "file": str(IXI / row["file"])})
    cache = tmp_path / "cache"
    prepare_cohort(data, cache, limit=2, show_progress=False)
    first = cache / "subjects" / rows[0]["subject"] / "image.nii.gz"
    stamp = first.stat().st_mtime_ns
    prepare_cohort(data, cache, show_progress=False)
    assert first.stat().st_mtime_ns == stamp  # not redone
    manifest = read_manifest(cache)
    assert [r["subject"] for r in manifest] == [r["subject"] for r in rows]
    assert all(1000 < float(r["brain_volume_ml"]) < 2000 for r in manifest)
    summary = json.loads((cache / "cohort.json").read_text())
    assert summary["processed"] == 3 and summary["failed"] == {}

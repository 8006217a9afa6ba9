"""The healthy cohort: every healthy scan preprocessed onto the model grid, with a manifest.

The train/validation split is by subject, fixed by a seed and stratified by age, and is
computed over the whole participants table (so that processing a subset never changes it).
Subjects without an age go to training (usable only by models that ignore covariates).
Preparation is resumable: a subject whose folder holds a preprocess.json is not redone.
"""

from __future__ import annotations

import csv
import json
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from .errors import InputError, NeuroADError
from .grid import GridSpec
from .preprocessing import preprocess, save_preprocessed
from .preprocessing.files import BRAIN_MASK, IMAGE, REPORT

MANIFEST_CSV = "cohort.csv"
MANIFEST_JSON = "cohort.json"
AGE_STRATA = 5


@dataclass
class Subject:
    subject: str
    age: float | None
    sex: str | None
    file: str
    split: str = "train"


def read_participants(data_dir: str | os.PathLike) -> list[Subject]:
    """Read `participants.csv` (subject, age, sex, file); missing age/sex become None."""
    table = Path(data_dir) / "participants.csv"
    if not table.is_file():
        raise InputError(f"No participants.csv in {data_dir}: it must list subject,age,sex,file.")
    subjects = []
    with table.open(newline="") as handle:
        for row in csv.DictReader(handle):
            age = row.get("age", "").strip()
            sex = row.get("sex", "").strip().upper()
            subjects.append(Subject(
                subject=row["subject"].strip(),
                age=float(age) if age else None,
                sex=sex if sex in ("F", "M") else None,
                file=row["file"].strip(),
            ))
    return subjects


def split_subjects(
    subjects: list[Subject], validation_fraction: float = 0.15, seed: int = 0
) -> list[Subject]:
    """Assign `split` in place: within each of AGE_STRATA age quantile bins, a seeded shuffle
    puts round(fraction * bin size) subjects into validation."""
    rng = np.random.default_rng(seed)
    aged = sorted((s for s in subjects if s.age is not None), key=lambda s: (s.age, s.subject))
    for s in subjects:
        s.split = "train"
    for stratum in np.array_split(np.arange(len(aged)), AGE_STRATA):
        chosen = rng.permutation(stratum)[: int(round(validation_fraction * len(stratum)))]
        for index in chosen:
            aged[index].split = "validation"
    return subjects


def _prepare_one(source: str, folder: str, grid: dict, threads: int, title: str) -> dict:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    result = preprocess(source, GridSpec.from_dict(grid))
    save_preprocessed(result, folder, title)
    return result.report


def prepare_cohort(
    data_dir: str | os.PathLike,
    cache_dir: str | os.PathLike,
    grid: GridSpec | None = None,
    validation_fraction: float = 0.15,
    seed: int = 0,
    workers: int = 1,
    limit: int | None = None,
    show_progress: bool = True,
) -> Path:
    """Preprocess the cohort into `cache_dir/subjects/<id>/` and write the manifests."""
    grid = grid or GridSpec()
    data_dir, cache_dir = Path(data_dir), Path(cache_dir)
    subjects = split_subjects(read_participants(data_dir), validation_fraction, seed)
    selected = subjects[:limit] if limit else subjects
    (cache_dir / "subjects").mkdir(parents=True, exist_ok=True)
    reports: dict[str, dict] = {}
    errors: dict[str, str] = {}
    todo = []
    for s in selected:
        folder = cache_dir / "subjects" / s.subject
        if (folder / REPORT).is_file():
            reports[s.subject] = json.loads((folder / REPORT).read_text())
        else:
            todo.append(s)
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {
            pool.submit(_prepare_one, str(data_dir / s.file),
                        str(cache_dir / "subjects" / s.subject), grid.to_dict(), threads,
                        f"{s.subject}  age {s.age}  {s.sex}  {s.split}"): s
            for s in todo
        }
        for future in tqdm(as_completed(futures), total=len(futures), disable=not show_progress,
                           desc="cohort", unit="scan", initial=0):
            subject = futures[future]
            try:
                reports[subject.subject] = future.result()
            except NeuroADError as error:
                errors[subject.subject] = str(error)
    _write_manifests(cache_dir, selected, reports, errors, grid, validation_fraction, seed,
                     data_dir)
    return cache_dir


def _write_manifests(cache_dir: Path, subjects: list[Subject], reports: dict, errors: dict,
                     grid: GridSpec, validation_fraction: float, seed: int,
                     data_dir: Path) -> None:
    rows = []
    for s in subjects:
        quality = reports.get(s.subject, {}).get("quality", {})
        rows.append({
            **asdict(s),
            "image": f"subjects/{s.subject}/{IMAGE}" if s.subject in reports else "",
            "brain_mask": f"subjects/{s.subject}/{BRAIN_MASK}" if s.subject in reports else "",
            "brain_volume_ml": quality.get("brain_volume_ml", ""),
            "ncc_with_template": quality.get("ncc_with_template", ""),
            "status": "ok" if s.subject in reports else f"failed: {errors.get(s.subject, '')}",
        })
    with (cache_dir / MANIFEST_CSV).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = {
        "source": str(data_dir.resolve()),
        "grid": grid.to_dict(),
        "split": {"seed": seed, "validation_fraction": validation_fraction,
                  "stratified_by": f"age ({AGE_STRATA} quantile bins)",
                  "train": [r["subject"] for r in rows if r["split"] == "train"],
                  "validation": [r["subject"] for r in rows if r["split"] == "validation"]},
        "processed": len(reports),
        "failed": errors,
    }
    (cache_dir / MANIFEST_JSON).write_text(json.dumps(summary, indent=2))


def read_manifest(cache_dir: str | os.PathLike) -> list[dict]:
    """The rows of a prepared cohort's manifest (only subjects that processed)."""
    with (Path(cache_dir) / MANIFEST_CSV).open(newline="") as handle:
        return [row for row in csv.DictReader(handle) if row["status"] == "ok"]

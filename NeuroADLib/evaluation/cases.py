"""Benchmark sets: real lesion cases and synthetic lesions on healthy validation scans, each
case a folder on the model grid (image, brain mask, lesion mask) listed in a manifest.

Manifest columns: case, contrast, kind (healthy | synthetic | real | clinical_acquisition |
clinical_demo), image, brain_mask, lesion_mask (empty for healthy), subject, age, sex,
reference (expert | algorithmic | synthetic | none), source.

The "healthy under clinical acquisition" set holds the healthy validation scans degraded by
the acquisition augmentation under seeds no trainer uses, and the bundled clinical demo scan
(healthy tissue outside a glioma, no mask): what a scan from another scanner looks like.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..cohort import read_manifest
from ..grid import GridSpec
from ..preprocessing import native_to_grid, preprocess
from ..preprocessing.pipeline import preprocess_like
from ..synthesis import SynthesisConfig, load_library, synthesize
from ..synthesis.acquisition import AcquisitionConfig, augment_acquisition
from ..volumes import read_volume, write_volume

MANIFEST = "cases.csv"
# Benchmark copies are drawn from seeds far from the trainers' (0 + subject x copies + copy).
CLINICAL_SEED = 1_000_003
DEMO_SCAN = Path(__file__).resolve().parent.parent / "data" / "demo" / "tcga_fg_6692_t1.nii.gz"
FIELDS = ["case", "contrast", "kind", "image", "brain_mask", "lesion_mask", "subject", "age",
          "sex", "reference", "source"]

# The real development cases in ../shared/data/lesions: which contrast carries the registration
# (its brain mask and transform serve the others), the lesion mask and how it was made.
REAL_CASES = {
    "ms_patient19": {"reference": "t1", "contrasts": ["t1", "t2", "flair"],
                     "mask": "mask.nii.gz", "quality": "expert", "brain_mask": None},
    "tcga_du_7294": {"reference": "t1", "contrasts": ["t1", "t1c", "t2", "flair"],
                     "mask": "mask_algorithmic.nii.gz", "quality": "algorithmic",
                     "brain_mask": None},
    "brats2013_pat0005": {"reference": "flair", "contrasts": ["flair", "t1c"],
                          "mask": "mask.nii.gz", "quality": "expert",
                          "brain_mask": "brainmask.nii.gz"},
}


def _write(array: np.ndarray, like: sitk.Image, path: Path) -> str:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(like)
    write_volume(image, path)
    return path.name


def _write_manifest(rows: list[dict], out: Path) -> Path:
    with (out / MANIFEST).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return out / MANIFEST


def read_cases(manifest: str | os.PathLike) -> list[dict]:
    """Rows of a benchmark manifest with paths made absolute."""
    manifest = Path(manifest)
    rows = list(csv.DictReader(manifest.open(newline="")))
    for row in rows:
        for key in ("image", "brain_mask", "lesion_mask"):
            row[key] = str(manifest.parent / row[key]) if row[key] else ""
    return rows


def build_real_set(lesion_dir: str | os.PathLike, out: str | os.PathLike,
                   grid: GridSpec | None = None) -> Path:
    """Preprocess every real lesion case (each contrast) onto the grid with its lesion mask."""
    grid = grid or GridSpec()
    lesion_dir, out = Path(lesion_dir), Path(out)
    rows = []
    for name, spec in REAL_CASES.items():
        folder = lesion_dir / name
        if not folder.is_dir():
            continue
        brain_mask = folder / spec["brain_mask"] if spec["brain_mask"] else None
        reference = preprocess(folder / f"{spec['reference']}.nii.gz", grid, brain_mask=brain_mask)
        lesion = read_volume(folder / spec["mask"]) > 0
        lesion_grid = sitk.GetArrayFromImage(native_to_grid(
            sitk.Cast(lesion, sitk.sitkFloat32), reference.template_to_native, grid)) > 0.5
        brain = sitk.GetArrayFromImage(reference.brain_mask)
        case_dir = out / name
        case_dir.mkdir(parents=True, exist_ok=True)
        _write(brain, reference.image, case_dir / "brain_mask.nii.gz")
        _write(lesion_grid.astype(np.uint8), reference.image, case_dir / "lesion_mask.nii.gz")
        for contrast in spec["contrasts"]:
            image = (reference.image if contrast == spec["reference"]
                     else preprocess_like(folder / f"{contrast}.nii.gz", reference))
            write_volume(image, case_dir / f"{contrast}.nii.gz")
            rows.append({"case": f"{name}_{contrast}", "contrast": contrast, "kind": "real",
                         "image": f"{name}/{contrast}.nii.gz",
                         "brain_mask": f"{name}/brain_mask.nii.gz",
                         "lesion_mask": f"{name}/lesion_mask.nii.gz", "subject": name,
                         "age": "", "sex": "", "reference": spec["quality"],
                         "source": str(folder)})
    return _write_manifest(rows, out)


def build_synthetic_set(
    cohort_dir: str | os.PathLike,
    out: str | os.PathLike,
    versions: int = 3,
    library_folder: str | os.PathLike | None = None,
    seed: int = 0,
) -> Path:
    """For every validation subject of a prepared cohort: the untouched healthy scan and
    `versions` lesioned copies (1 to 4 lesions of varied size each, seeded per subject and
    version)."""
    cohort_dir, out = Path(cohort_dir), Path(out)
    library = load_library(library_folder) if library_folder else None
    rows = []
    subjects = [r for r in read_manifest(cohort_dir) if r["split"] == "validation"]
    for number, subject in enumerate(subjects):
        image = sitk.ReadImage(str(cohort_dir / subject["image"]), sitk.sitkFloat32)
        brain = sitk.GetArrayFromImage(sitk.ReadImage(str(cohort_dir / subject["brain_mask"])))
        array = sitk.GetArrayFromImage(image)
        case_dir = out / subject["subject"]
        case_dir.mkdir(parents=True, exist_ok=True)
        common = {"contrast": "t1", "subject": subject["subject"], "age": subject["age"],
                  "sex": subject["sex"], "source": str(cohort_dir / subject["image"])}
        _write(brain, image, case_dir / "brain_mask.nii.gz")
        write_volume(image, case_dir / "healthy.nii.gz")
        rows.append({**common, "case": f"{subject['subject']}_healthy", "kind": "healthy",
                     "image": f"{subject['subject']}/healthy.nii.gz",
                     "brain_mask": f"{subject['subject']}/brain_mask.nii.gz",
                     "lesion_mask": "", "reference": "none"})
        for version in range(versions):
            case_seed = seed + 1000 * number + version
            lesioned = synthesize(array, brain > 0, case_seed, library, SynthesisConfig())
            stem = f"synthetic_{version}"
            _write(lesioned.image, image, case_dir / f"{stem}.nii.gz")
            _write(lesioned.mask.astype(np.uint8), image, case_dir / f"{stem}_lesion.nii.gz")
            rows.append({**common, "case": f"{subject['subject']}_{stem}", "kind": "synthetic",
                         "image": f"{subject['subject']}/{stem}.nii.gz",
                         "brain_mask": f"{subject['subject']}/brain_mask.nii.gz",
                         "lesion_mask": f"{subject['subject']}/{stem}_lesion.nii.gz",
                         "reference": "synthetic"})
    return _write_manifest(rows, out)


def build_clinical_set(
    cohort_dir: str | os.PathLike,
    out: str | os.PathLike,
    copies: int = 2,
    seed: int = CLINICAL_SEED,
    config: AcquisitionConfig | None = None,
    demo: str | os.PathLike | None = DEMO_SCAN,
) -> Path:
    """Every healthy validation scan under `copies` random clinical acquisitions, plus the
    clinical demo scan preprocessed onto the grid (skipped when `demo` is None)."""
    cohort_dir, out = Path(cohort_dir), Path(out)
    rows = []
    subjects = [r for r in read_manifest(cohort_dir) if r["split"] == "validation"]
    for number, subject in enumerate(subjects):
        image = sitk.ReadImage(str(cohort_dir / subject["image"]), sitk.sitkFloat32)
        brain = sitk.GetArrayFromImage(sitk.ReadImage(str(cohort_dir / subject["brain_mask"])))
        case_dir = out / subject["subject"]
        case_dir.mkdir(parents=True, exist_ok=True)
        _write(brain, image, case_dir / "brain_mask.nii.gz")
        for copy in range(copies):
            degraded, drawn = augment_acquisition(sitk.GetArrayFromImage(image), brain > 0,
                                                  seed + number * copies + copy, config)
            stem = f"acquisition_{copy}"
            _write(degraded, image, case_dir / f"{stem}.nii.gz")
            rows.append({"case": f"{subject['subject']}_{stem}", "contrast": "t1",
                         "kind": "clinical_acquisition",
                         "image": f"{subject['subject']}/{stem}.nii.gz",
                         "brain_mask": f"{subject['subject']}/brain_mask.nii.gz",
                         "lesion_mask": "", "subject": subject["subject"],
                         "age": subject["age"], "sex": subject["sex"], "reference": "none",
                         "source": f"{cohort_dir / subject['image']} {drawn}"})
    if demo is not None:
        case = preprocess(demo)
        case_dir = out / "clinical_demo"
        case_dir.mkdir(parents=True, exist_ok=True)
        write_volume(case.image, case_dir / "t1.nii.gz")
        write_volume(case.brain_mask, case_dir / "brain_mask.nii.gz")
        rows.append({"case": "clinical_demo", "contrast": "t1", "kind": "clinical_demo",
                     "image": "clinical_demo/t1.nii.gz",
                     "brain_mask": "clinical_demo/brain_mask.nii.gz", "lesion_mask": "",
                     "subject": "tcga_fg_6692", "age": "", "sex": "", "reference": "none",
                     "source": str(demo)})
    return _write_manifest(rows, out)


def export_lesion_library(real_set: str | os.PathLike, library: str | os.PathLike) -> Path:
    """Copy the real cases' grid lesion masks into a library folder for `synthesize`."""
    library = Path(library)
    library.mkdir(parents=True, exist_ok=True)
    for row in read_cases(Path(real_set) / MANIFEST):
        target = library / f"{row['subject']}.nii.gz"
        if row["lesion_mask"] and not target.exists():
            write_volume(sitk.ReadImage(row["lesion_mask"]), target)
    return library

"""Grid packs: a table of grid volumes (a prepared cohort, or a benchmark set) with its images
and masks in one compressed `.npz`, so that training and evaluation run on a machine without
SimpleITK or the cache folders (a GPU server) and travel as one file.

Images are stored as 8-bit integers, round(x * 255): grid images are normalised to [0, 1], so
a packed voxel is at most 1/510 (0.002) from the original. Masks are stored as booleans. Only
numpy reads a pack (no pickle: the table is JSON).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

PACK_SUFFIX = ".npz"
IMAGE_LEVELS = 255
VOLUME_KEYS = ("image", "brain_mask", "lesion_mask")


def is_pack(path: str | os.PathLike) -> bool:
    return Path(path).suffix == PACK_SUFFIX


@dataclass
class GridPack:
    """The rows of a packed table and their volumes (as float32 images and bool masks)."""

    rows: list[dict]
    arrays: dict[str, np.ndarray]

    def volume(self, index: int, key: str) -> np.ndarray | None:
        """`key` (image, brain_mask or lesion_mask) of row `index`; None if the row has none."""
        name = f"{key}_{index}"
        if name not in self.arrays:
            return None
        array = self.arrays[name]
        if key == "image":
            return array.astype(np.float32) / IMAGE_LEVELS
        return array.astype(bool)


def write_pack(rows: list[dict], volumes: list[dict[str, np.ndarray]],
               out: str | os.PathLike) -> Path:
    """Write rows (JSON-able dicts) and their volumes ({image, brain_mask[, lesion_mask]})."""
    arrays = {"table": np.frombuffer(json.dumps(rows).encode(), dtype=np.uint8)}
    for index, row_volumes in enumerate(volumes):
        for key, array in row_volumes.items():
            if key == "image":
                array = np.round(np.clip(array, 0.0, 1.0) * IMAGE_LEVELS).astype(np.uint8)
            else:
                array = np.asarray(array) > 0
            arrays[f"{key}_{index}"] = array
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    return out


def read_pack(path: str | os.PathLike) -> GridPack:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Grid pack not found: {path}.")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as error:
        raise InputError(f"Cannot read grid pack {path}: {error}") from error
    if "table" not in arrays:
        raise InputError(f"{path} is not a NeuroAD grid pack (it has no table).")
    rows = json.loads(arrays.pop("table").tobytes().decode())
    return GridPack(rows, arrays)


def read_grid_file(path: str | os.PathLike) -> np.ndarray:
    """A grid volume file as a float32 array (SimpleITK, imported only here)."""
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path), sitk.sitkFloat32))


def pack_cohort(cache_dir: str | os.PathLike, out: str | os.PathLike,
                splits: tuple[str, ...] = ("train", "validation")) -> Path:
    """Pack the subjects of a prepared cohort (those of `splits`): subject, age, sex, split."""
    from .cohort import read_manifest

    cache_dir = Path(cache_dir)
    rows, volumes = [], []
    for row in read_manifest(cache_dir):
        if row["split"] not in splits:
            continue
        rows.append({key: row[key] for key in ("subject", "age", "sex", "split")})
        volumes.append({"image": read_grid_file(cache_dir / row["image"]),
                        "brain_mask": read_grid_file(cache_dir / row["brain_mask"])})
    return write_pack(rows, volumes, out)


def pack_cases(manifest: str | os.PathLike, out: str | os.PathLike,
               contrast: str | None = None) -> Path:
    """Pack a benchmark manifest (cases.csv), optionally only the cases of one contrast."""
    from .evaluation.cases import read_cases

    rows, volumes = [], []
    for case in read_cases(manifest):
        if contrast and case["contrast"] != contrast:
            continue
        volumes.append({key: read_grid_file(case[key]) for key in VOLUME_KEYS if case[key]})
        rows.append({key: value for key, value in case.items() if key not in VOLUME_KEYS})
    return write_pack(rows, volumes, out)

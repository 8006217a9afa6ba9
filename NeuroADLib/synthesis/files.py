"""`neuroad synth`: lesion a scan (native or already on the model grid) and write the result."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict

import numpy as np
import SimpleITK as sitk

from ..grid import GridSpec
from ..outputs import atomic_output_folder
from ..volumes import read_volume, same_geometry, write_volume
from .lesions import SynthesisConfig, load_library, synthesize

LESIONED = "image.nii.gz"
LESION_MASK = "lesion_mask.nii.gz"
PROBABILITY = "lesion_probability.nii.gz"
BRAIN_MASK = "brain_mask.nii.gz"
REPORT = "synth.json"


def grid_case(path: str | os.PathLike, grid: GridSpec,
              brain_mask: str | os.PathLike | None = None) -> tuple[sitk.Image, np.ndarray]:
    """The scan on the grid and its brain mask: a grid image is used as it is (brain = its
    non-zero voxels unless a mask is given); anything else is preprocessed first."""
    image = read_volume(path)
    if same_geometry(image, grid.reference_image()):
        mask_source = read_volume(brain_mask) if brain_mask else image
        return sitk.Cast(image, sitk.sitkFloat32), sitk.GetArrayFromImage(mask_source) > 0
    from ..preprocessing import preprocess

    result = preprocess(image, grid, brain_mask=brain_mask)
    return result.image, sitk.GetArrayFromImage(result.brain_mask) > 0


def synthesize_file(
    path: str | os.PathLike,
    out: str | os.PathLike,
    seed: int,
    config: SynthesisConfig | None = None,
    library_folder: str | os.PathLike | None = None,
    brain_mask: str | os.PathLike | None = None,
    grid: GridSpec | None = None,
) -> dict:
    """Write the lesioned grid image, the lesion mask, the probability map, the brain mask and
    a report into `out` (all or nothing)."""
    grid = grid or GridSpec()
    config = config or SynthesisConfig()
    image, brain = grid_case(path, grid, brain_mask)
    library = load_library(library_folder) if library_folder else None
    start = time.perf_counter()
    result = synthesize(sitk.GetArrayFromImage(image), brain, seed, library, config)
    seconds = time.perf_counter() - start
    report = {
        "input": str(path),
        "seed": seed,
        "config": asdict(config),
        "library": str(library_folder) if library_folder else None,
        "library_shapes": len(library) if library else 0,
        "lesion_volume_ml": float(result.mask.sum() * grid.voxel_volume_ml),
        "synthesis_s": round(seconds, 3),
    }
    with atomic_output_folder(out) as staging:
        for name, array in ((LESIONED, result.image), (LESION_MASK, result.mask.astype(np.uint8)),
                            (PROBABILITY, result.probability),
                            (BRAIN_MASK, brain.astype(np.uint8))):
            volume = sitk.GetImageFromArray(array)
            volume.CopyInformation(image)
            write_volume(volume, staging / name)
        (staging / REPORT).write_text(json.dumps(report, indent=2))
    return report

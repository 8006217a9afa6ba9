"""The preprocessing output folder: what `neuroad preprocess` writes and later steps read.

    image.nii.gz              the scan on the model grid (normalised, brain only; MNI mm header)
    brain_mask.nii.gz         the brain mask on the grid
    native_brain_mask.nii.gz  the brain mask on the input scan
    template_to_native.tfm    the affine (ITK text format) from grid/template to the input
    preprocess.json           steps, timings, quality figures, grid spec, input geometry
    qc.png                    orthogonal slices with the mask outline: input (top), grid (bottom)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from ..grid import GridSpec
from ..outputs import atomic_output_folder
from ..qc import save_qc_picture
from ..volumes import write_volume
from .pipeline import PreprocessResult
from .spatial import load_transform, save_transform

IMAGE = "image.nii.gz"
BRAIN_MASK = "brain_mask.nii.gz"
NATIVE_BRAIN_MASK = "native_brain_mask.nii.gz"
TRANSFORM = "template_to_native.tfm"
REPORT = "preprocess.json"
QC_PICTURE = "qc.png"


@dataclass
class PreprocessedCase:
    """A preprocessing folder read back: grid image and mask, transform and report."""

    image: sitk.Image
    brain_mask: sitk.Image
    template_to_native: sitk.AffineTransform
    grid: GridSpec
    report: dict


def save_preprocessed(result: PreprocessResult, folder: str | os.PathLike,
                      title: str = "") -> Path:
    """Write every preprocessing output into `folder`, all or nothing."""
    folder = Path(folder)
    with atomic_output_folder(folder) as staging:
        write_volume(result.image, staging / IMAGE)
        write_volume(result.brain_mask, staging / BRAIN_MASK)
        write_volume(result.native_brain_mask, staging / NATIVE_BRAIN_MASK)
        save_transform(result.template_to_native, staging / TRANSFORM)
        save_qc_picture([(result.native, result.native_brain_mask),
                         (result.image, result.brain_mask)], staging / QC_PICTURE, title)
        (staging / REPORT).write_text(json.dumps(result.report, indent=2))
    return folder


def load_preprocessed(folder: str | os.PathLike) -> PreprocessedCase:
    folder = Path(folder)
    report = json.loads((folder / REPORT).read_text())
    return PreprocessedCase(
        image=sitk.ReadImage(str(folder / IMAGE), sitk.sitkFloat32),
        brain_mask=sitk.ReadImage(str(folder / BRAIN_MASK), sitk.sitkUInt8),
        template_to_native=load_transform(folder / TRANSFORM),
        grid=GridSpec.from_dict(report["grid"]),
        report=report,
    )

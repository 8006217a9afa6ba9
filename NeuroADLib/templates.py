"""The bundled MNI ICBM152 2009a symmetric template (from the nilearn wheel; see NOTICE there)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .grid import GridSpec

TEMPLATE_ROOT = Path(__file__).parent / "data" / "templates"
_T1_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


def template_folder(name: str) -> Path:
    folder = TEMPLATE_ROOT / name
    if not folder.is_dir():
        raise FileNotFoundError(f"Template {name!r} is not bundled (looked in {TEMPLATE_ROOT}).")
    return folder


@lru_cache(maxsize=4)
def _template_on_grid(grid: GridSpec) -> tuple[sitk.Image, sitk.Image]:
    t1 = sitk.ReadImage(str(template_folder(grid.template) / _T1_FILE), sitk.sitkFloat32)
    # The template is skull-stripped: its brain is every voxel above zero.
    brain = sitk.Cast(t1 > 0, sitk.sitkFloat32)
    reference = grid.reference_image()
    t1_grid = sitk.Resample(t1, reference, sitk.Transform(), sitk.sitkLinear, 0.0)
    brain_grid = sitk.Resample(brain, reference, sitk.Transform(), sitk.sitkLinear, 0.0) > 0.5
    t1_grid = sitk.RescaleIntensity(t1_grid, 0.0, 1.0)
    return t1_grid, sitk.Cast(brain_grid, sitk.sitkUInt8)


def template_t1(grid: GridSpec) -> sitk.Image:
    """The template T1 (skull-stripped, scaled to 0..1) resampled onto a grid."""
    return sitk.Image(_template_on_grid(grid)[0])


def template_brain_mask(grid: GridSpec) -> sitk.Image:
    """The template's brain mask (uint8) on a grid."""
    return sitk.Image(_template_on_grid(grid)[1])


_TISSUE_FILES = {"gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
                 "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"}


def template_tissue_priors(grid: GridSpec) -> dict[str, np.ndarray]:
    """The template's grey- and white-matter probability maps on a grid ((z, y, x) float32
    arrays in [0, 1]): where the intensity standard measures each tissue."""
    reference = grid.reference_image()
    priors = {}
    for tissue, name in _TISSUE_FILES.items():
        image = sitk.ReadImage(str(template_folder(grid.template) / name), sitk.sitkFloat32)
        on_grid = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, 0.0)
        # stored as uint8, 255 = probability 1
        priors[tissue] = np.clip(sitk.GetArrayFromImage(on_grid) / 255.0, 0.0, 1.0)
    return priors

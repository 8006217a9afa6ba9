"""Preprocessing: a native scan to the model grid, with everything needed to come back.

Steps (each timed in the report): read and check, reorient (to LPS axes), foreground / brain
mask source, N4 bias-field correction, affine registration to the MNI152 2009a template,
brain extraction (template brain carried over by a coarse deformable registration, or the
non-background of an already skull-stripped scan, or the user's mask), a second brain-to-brain
affine registration, resampling onto the grid, intensity normalisation inside the brain.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..errors import InputError, PreprocessingError
from ..grid import GridSpec
from ..progress import Progress
from ..templates import template_brain_mask, template_t1
from ..volumes import geometry_of, read_volume
from . import masks
from .bias import n4_bias_correct
from .intensity import NORMALISATION_PERCENTILE, normalise_in_brain
from .registration import affine_to_template, deformable_brain_mask, initial_alignments
from .spatial import affine_matrix, native_to_grid

# Steps a preprocessing usually reports (for progress totals; retries add more).
PREPROCESS_STEPS = 10
# Brain (intracranial) volumes outside this range mean the extraction failed.
PLAUSIBLE_BRAIN_ML = (900.0, 2200.0)
# A registration whose brain mask is implausible or far from the template's brain on the grid
# is retried with other sampling seeds, this many times in all.
MIN_DICE_WITH_TEMPLATE = 0.88
REGISTRATION_ATTEMPTS = 3
# Typical scalp plus skull thickness in adults, peeled off the head for the first registration.
SCALP_AND_SKULL_MM = 12.0
# Extra margin kept around the affine brain estimate for the deformable refinement, mm.
DEFORMABLE_REGION_MM = 10.0


@dataclass
class PreprocessResult:
    """A scan on the model grid plus what maps results back onto the native scan."""

    native: sitk.Image
    image: sitk.Image
    brain_mask: sitk.Image
    native_brain_mask: sitk.Image
    template_to_native: sitk.AffineTransform
    grid: GridSpec
    report: dict = field(default_factory=dict)


@dataclass
class _Timer:
    progress: Progress = field(default_factory=Progress)
    timings: dict = field(default_factory=dict)

    @contextmanager
    def step(self, name: str):
        """Time a step (a step run again, a retry, adds to its total) after reporting it and
        checking for cancellation."""
        self.progress.step(f"preprocess: {name}")
        start = time.perf_counter()
        yield
        total = self.timings.get(name, 0.0) + time.perf_counter() - start
        self.timings[name] = round(total, 3)


def preprocess(
    source: str | os.PathLike | sitk.Image,
    grid: GridSpec | None = None,
    brain_mask: str | os.PathLike | sitk.Image | None = None,
    skull_stripped: bool | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> PreprocessResult:
    """Bring a native scan onto the model grid.

    `skull_stripped=None` detects an already skull-stripped scan (constant background, brain-
    sized foreground); True forces it, False forces extraction. A given `brain_mask` (native
    space, any geometry covering the scan) replaces extraction. `progress` hears of every
    step and may cancel between them.
    """
    grid = grid or GridSpec()
    timer = _Timer(progress or Progress())
    with timer.step("read"):
        native = source if isinstance(source, sitk.Image) else read_volume(source)
    with timer.step("reorient"):
        oriented = sitk.Cast(sitk.DICOMOrient(native, "LPS"), sitk.sitkFloat32)
        spacing_zyx = tuple(reversed(oriented.GetSpacing()))
    with timer.step("foreground"):
        given_mask = _given_mask(brain_mask, oriented) if brain_mask is not None else None
        stripped = None
        if given_mask is None and skull_stripped is not False:
            stripped = masks.stripped_foreground(oriented)
            if stripped is None and skull_stripped:
                stripped = masks.head_mask(oriented)
        known_brain = given_mask if given_mask is not None else stripped
        head = known_brain if known_brain is not None else masks.head_mask(oriented)
        # What the first registration sees: the known brain, or the head without its scalp.
        first_inside = known_brain if known_brain is not None else _without_scalp(
            head, spacing_zyx)
    mask_source = (
        "given" if given_mask is not None else "skull-stripped input" if stripped is not None
        else "template deformable"
    )
    with timer.step("n4"):
        corrected = n4_bias_correct(oriented, masks.mask_image(head, oriented))

    template = template_t1(grid)
    template_brain = template_brain_mask(grid)
    template_mask = sitk.GetArrayFromImage(template_brain) > 0
    voxel_ml = float(np.prod(oriented.GetSpacing())) / 1000.0
    for attempt in range(REGISTRATION_ATTEMPTS):
        affine, brain = _align(corrected, head, first_inside, known_brain, template,
                               template_brain, spacing_zyx, seed + 1000 * attempt, timer)
        brain_ml = float(brain.sum()) * voxel_ml
        with timer.step("resample"):
            brain_image = masks.mask_image(brain, oriented)
            mask_grid = sitk.GetArrayFromImage(
                native_to_grid(sitk.Cast(brain_image, sitk.sitkFloat32), affine, grid)
            ) > 0.5
        plausible = PLAUSIBLE_BRAIN_ML[0] <= brain_ml <= PLAUSIBLE_BRAIN_ML[1]
        aligned = masks.dice(mask_grid, template_mask) >= MIN_DICE_WITH_TEMPLATE
        if given_mask is not None or (plausible and aligned):
            break
    else:
        raise PreprocessingError(
            f"Brain extraction failed {REGISTRATION_ATTEMPTS} times (last: {brain_ml:.0f} mL, "
            f"plausible {PLAUSIBLE_BRAIN_ML[0]:.0f}-{PLAUSIBLE_BRAIN_ML[1]:.0f} mL): is this a "
            "head MRI? If it is, give a brain mask with --brain-mask."
        )
    with timer.step("resample"):
        image_grid = sitk.GetArrayFromImage(native_to_grid(corrected, affine, grid))
    with timer.step("normalise"):
        if not mask_grid.any():
            raise PreprocessingError("The brain fell outside the model grid after registration.")
        normalised, scale = normalise_in_brain(image_grid, mask_grid)

    reference = grid.reference_image()
    image_out = sitk.GetImageFromArray(normalised)
    image_out.CopyInformation(reference)
    mask_out = sitk.GetImageFromArray(mask_grid.astype(np.uint8))
    mask_out.CopyInformation(reference)
    native_mask = sitk.Resample(brain_image, native, sitk.Transform(), sitk.sitkNearestNeighbor, 0)

    template_array = sitk.GetArrayFromImage(template)
    report = {
        "steps": list(timer.timings),
        "timings_s": timer.timings,
        "input_geometry": geometry_of(native),
        "input_orientation": sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(
            native.GetDirection()
        ),
        "brain_mask_source": mask_source,
        "registration_attempts": attempt + 1,
        "normalisation": {
            "method": f"divide by the brain's {NORMALISATION_PERCENTILE}th percentile, clip 0..1",
            "scale": scale,
        },
        "quality": {
            "brain_volume_ml": round(brain_ml, 1),
            "ncc_with_template": round(normalised_cross_correlation(
                normalised, template_array, template_mask & mask_grid), 4),
            "dice_with_template_brain": round(masks.dice(mask_grid, template_mask), 4),
        },
        "template_to_native_lps": affine_matrix(affine).round(6).tolist(),
        "grid": grid.to_dict(),
        "seed": seed,
    }
    return PreprocessResult(native, image_out, mask_out, native_mask, affine, grid, report)


def preprocess_like(
    source: str | os.PathLike | sitk.Image, reference: PreprocessResult
) -> sitk.Image:
    """Another contrast of the same session (already co-registered with the reference scan,
    e.g. the FLAIR next to a T1) onto the grid with the reference's transform and brain mask:
    N4 inside the brain, resampling, normalisation. Returns the normalised grid image."""
    image = source if isinstance(source, sitk.Image) else read_volume(source)
    brain = sitk.Resample(reference.native_brain_mask, image, sitk.Transform(),
                          sitk.sitkNearestNeighbor, 0)
    corrected = n4_bias_correct(image, brain)
    on_grid = sitk.GetArrayFromImage(
        native_to_grid(corrected, reference.template_to_native, reference.grid))
    mask_grid = sitk.GetArrayFromImage(reference.brain_mask) > 0
    normalised, _ = normalise_in_brain(on_grid, mask_grid)
    result = sitk.GetImageFromArray(normalised)
    result.CopyInformation(reference.image)
    return result


def _align(
    corrected: sitk.Image,
    head: np.ndarray,
    first_inside: np.ndarray,
    known_brain: np.ndarray | None,
    template: sitk.Image,
    template_brain: sitk.Image,
    spacing_zyx: tuple[float, float, float],
    seed: int,
    timer: _Timer,
) -> tuple[sitk.AffineTransform, np.ndarray]:
    """Affine to the template (fitted inside `first_inside`), the brain mask, and (when the
    mask was extracted here) a second brain-to-brain affine. Returns (template -> native
    affine, native brain mask)."""
    with timer.step("registration"):
        scalp = 0.0 if known_brain is not None else None
        starts = initial_alignments(head, corrected, template_brain, scalp_to_brain_mm=scalp)
        affine, _ = affine_to_template(_masked(corrected, first_inside), template,
                                       template_brain, starts, seed=seed)
    if known_brain is not None:
        return affine, known_brain
    with timer.step("brain_extraction"):
        brain = _extract_brain(corrected, template, template_brain, affine, spacing_zyx, seed)
    with timer.step("brain_registration"):
        affine, _ = affine_to_template(_masked(corrected, brain), template, template_brain,
                                       affine, seed=seed)
    return affine, brain


def normalised_cross_correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Pearson correlation of two volumes over a mask."""
    x, y = a[mask].astype(float), b[mask].astype(float)
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denominator) if denominator > 0 else 0.0


def _given_mask(mask: str | os.PathLike | sitk.Image, oriented: sitk.Image) -> np.ndarray:
    image = mask if isinstance(mask, sitk.Image) else _read_mask(Path(mask))
    on_scan = sitk.Resample(
        sitk.Cast(image > 0, sitk.sitkUInt8), oriented, sitk.Transform(),
        sitk.sitkNearestNeighbor, 0,
    )
    array = sitk.GetArrayFromImage(on_scan) > 0
    if not array.any():
        raise InputError("The brain mask does not overlap the scan: check that it belongs to it.")
    return array


def _read_mask(path: Path) -> sitk.Image:
    try:
        return read_volume(path)
    except InputError as error:
        raise InputError(f"Brain mask: {error}") from None


def _without_scalp(head: np.ndarray, spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    """The head without its outer SCALP_AND_SKULL_MM: bright scalp fat would otherwise pull
    the template brain outwards onto the scalp (seen on a thick-slice clinical T1)."""
    inner = ndimage.binary_erosion(head, masks.ball(SCALP_AND_SKULL_MM, spacing_zyx))
    return masks.largest_component(inner) if inner.any() else head


def _masked(image: sitk.Image, mask: np.ndarray) -> sitk.Image:
    return sitk.Mask(image, masks.mask_image(mask, image))


def _extract_brain(
    corrected: sitk.Image,
    template: sitk.Image,
    template_brain: sitk.Image,
    affine: sitk.AffineTransform,
    spacing_zyx: tuple[float, float, float],
    seed: int,
) -> np.ndarray:
    """Template brain on the subject: affine estimate, then a deformable refinement inside a
    margin around it; largest component, holes filled."""
    affine_brain = sitk.Resample(
        sitk.Cast(template_brain, sitk.sitkFloat32), corrected, affine.GetInverse(),
        sitk.sitkLinear, 0.0,
    )
    estimate = sitk.GetArrayFromImage(affine_brain) > 0.5
    region = ndimage.binary_dilation(estimate, masks.ball(DEFORMABLE_REGION_MM, spacing_zyx))
    soft = deformable_brain_mask(
        corrected, masks.mask_image(region, corrected), template, template_brain, affine,
        seed=seed,
    )
    brain = masks.fill_holes(masks.largest_component(sitk.GetArrayFromImage(soft) > 0.5))
    return masks.refine_with_intensity(sitk.GetArrayFromImage(corrected), brain, spacing_zyx)

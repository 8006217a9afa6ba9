"""Registration of a subject to the template.

Two registrations, each with the template as the fixed image:
- `affine_to_template`: similarity then affine, Mattes mutual information, restricted to the
  template brain plus a thin band around it (the dark CSF/skull rim is a strong, reliable edge).
  The result maps template points to subject points; it is the transform between the native
  scan and the model grid, and it is exactly invertible.
- `deformable_brain_mask`: a coarse B-spline from the subject to the template, used only to
  carry the template's brain outline onto the subject (never to move intensities).
The search starts from the top of the head, so necks and partial fields of view do not pull the
brain down (the pitfall of a single moments-initialised affine, see docs/ENVIRONMENT.md).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .threads import single_threaded

# Distance from the top of the head (scalp) to the top of the brain in adults, mm.
SCALP_TO_BRAIN_MM = 12.0
FIXED_BAND_MM = 4.0
# The top of the head counts as cut by the field of view when the top slice holds more head than
# this fraction of the largest slice; the brain top is then searched this far above the cut.
TOP_CUT_FRACTION = 0.25
CUT_TOP_LIFTS_MM = (0.0, 15.0, 30.0, 45.0)
# SimpleITK reads a sampling seed of 0 as "use the wall clock": offset user seeds past it.
_SEED_OFFSET = 1


def _physical_points(mask: np.ndarray, image: sitk.Image, step: int = 1) -> np.ndarray:
    """Physical (LPS) coordinates of the voxels of a (z, y, x) mask."""
    index_zyx = np.argwhere(mask)[::step]
    index_xyz = index_zyx[:, ::-1].astype(float)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    return np.asarray(image.GetOrigin()) + (index_xyz * image.GetSpacing()) @ direction.T


def initial_alignments(
    head: np.ndarray,
    subject: sitk.Image,
    template_brain: sitk.Image,
    scalp_to_brain_mm: float | None = None,
) -> list[sitk.Similarity3DTransform]:
    """Starting positions of the template brain under the top of the subject's head.

    Its top goes `scalp_to_brain_mm` (default SCALP_TO_BRAIN_MM; 0 for a brain mask) below the
    highest head voxel; left-right and anterior-posterior follow the centroid of the upper
    10 cm of the head. `head` is a (z, y, x) mask of `subject` in LPS orientation. When the
    field of view cuts the top of the head (thick-slice clinical scans), the true top is
    unknown and several heights are returned, to be tried in turn.
    """
    if scalp_to_brain_mm is None:
        scalp_to_brain_mm = SCALP_TO_BRAIN_MM
    brain_points = _physical_points(sitk.GetArrayViewFromImage(template_brain) > 0, template_brain)
    brain_centre = brain_points.mean(axis=0)
    brain_top = brain_points[:, 2].max()
    head_points = _physical_points(head, subject, step=max(1, int(head.sum() // 200_000)))
    head_top = np.percentile(head_points[:, 2], 99.9)
    upper = head_points[head_points[:, 2] > head_top - 100.0]
    top_is_cut = head[-1].sum() > TOP_CUT_FRACTION * head.sum(axis=(1, 2)).max()
    lifts = CUT_TOP_LIFTS_MM if top_is_cut else (0.0,)
    starts = []
    for lift in lifts:
        target = np.array([upper[:, 0].mean(), upper[:, 1].mean(),
                           head_top - scalp_to_brain_mm + lift])
        transform = sitk.Similarity3DTransform()
        transform.SetCenter(brain_centre.tolist())
        offset = target - np.array([brain_centre[0], brain_centre[1], brain_top])
        transform.SetTranslation(offset.tolist())
        starts.append(transform)
    return starts


def isotropic(image: sitk.Image, spacing: float) -> sitk.Image:
    """The image on its own axes at `spacing` mm in every direction (a no-op when it already
    is), so that the multi-resolution pyramid shrinks thick-slice scans evenly instead of
    turning 5.5 mm slices into 22 mm ones."""
    if all(abs(s - spacing) < 1e-6 for s in image.GetSpacing()):
        return image
    size = [max(1, int(round(n * s / spacing))) for n, s in
            zip(image.GetSize(), image.GetSpacing(), strict=True)]
    reference = sitk.Image(size, image.GetPixelID())
    reference.SetDirection(image.GetDirection())
    reference.SetSpacing([spacing] * 3)
    first_centre = image.TransformContinuousIndexToPhysicalPoint([-0.5] * 3)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    reference.SetOrigin((np.array(first_centre) + direction @ np.full(3, spacing / 2)).tolist())
    return sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, 0.0)


def _registration(
    fixed_mask: sitk.Image, seed: int, shrink: list[int], sigmas: list[float], iterations: int
) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.25, seed + _SEED_OFFSET)
    method.SetMetricFixedMask(fixed_mask)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-3, numberOfIterations=iterations,
        relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(shrink)
    method.SetSmoothingSigmasPerLevel(sigmas)
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return method


def affine_to_template(
    subject: sitk.Image,
    template: sitk.Image,
    template_brain: sitk.Image,
    initial: list[sitk.Similarity3DTransform] | sitk.AffineTransform,
    seed: int = 0,
) -> tuple[sitk.AffineTransform, float]:
    """Registration of the template (fixed) to the subject (moving), returning the template ->
    subject affine and the final metric. From similarity starts, a coarse similarity stage runs
    from each and the best (lowest metric) goes on; from an affine, only the affine refinement
    runs."""
    spacing = template.GetSpacing()[0]
    band = [max(1, int(round(FIXED_BAND_MM / s))) for s in template.GetSpacing()]
    fixed_mask = sitk.BinaryDilate(template_brain, band)
    subject = isotropic(sitk.Cast(subject, sitk.sitkFloat32), spacing)

    affine = sitk.AffineTransform(3)
    if isinstance(initial, sitk.AffineTransform):
        affine.SetFixedParameters(initial.GetFixedParameters())
        affine.SetParameters(initial.GetParameters())
    else:
        best = None
        for start in initial:
            stage1 = sitk.Similarity3DTransform(start)
            similarity = _registration(fixed_mask, seed, [4, 2], [2.0 * spacing, spacing], 200)
            similarity.SetInitialTransform(stage1, inPlace=True)
            with single_threaded():
                similarity.Execute(template, subject)
            if best is None or similarity.GetMetricValue() < best[0]:
                best = (similarity.GetMetricValue(), stage1)
        stage1 = best[1]
        affine.SetCenter(stage1.GetCenter())
        affine.SetMatrix(stage1.GetMatrix())
        affine.SetTranslation(stage1.GetTranslation())
    refinement = _registration(fixed_mask, seed, [2, 1], [spacing, 0.0], 200)
    refinement.SetInitialTransform(affine, inPlace=True)
    with single_threaded():
        refinement.Execute(template, subject)
    return affine, float(refinement.GetMetricValue())


def deformable_brain_mask(
    subject: sitk.Image,
    subject_region: sitk.Image,
    template: sitk.Image,
    template_brain: sitk.Image,
    affine: sitk.AffineTransform,
    control_point_spacing_mm: float = 40.0,
    seed: int = 0,
) -> sitk.Image:
    """The template brain carried onto the subject through the affine plus a coarse B-spline
    (subject -> template) fitted inside `subject_region`. Returns a float mask (0..1)."""
    subject = sitk.Cast(subject, sitk.sitkFloat32)
    extent = [sz * sp for sz, sp in zip(subject.GetSize(), subject.GetSpacing(), strict=True)]
    mesh = [max(1, int(round(e / control_point_spacing_mm))) for e in extent]
    bspline = sitk.BSplineTransformInitializer(subject, mesh, order=3)
    inverse_affine = affine.GetInverse()

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.1, seed + _SEED_OFFSET)
    method.SetMetricFixedMask(subject_region)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsLBFGSB(
        gradientConvergenceTolerance=1e-5, numberOfIterations=30,
        maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=100,
        costFunctionConvergenceFactor=1e7,
    )
    shrink = max(1, int(round(4.0 / min(subject.GetSpacing()))))
    method.SetShrinkFactorsPerLevel([shrink])
    method.SetSmoothingSigmasPerLevel([2.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetMovingInitialTransform(inverse_affine)
    method.SetInitialTransform(bspline, inPlace=True)
    with single_threaded():
        method.Execute(subject, template)

    subject_to_template = sitk.CompositeTransform([inverse_affine, bspline])
    brain = sitk.Cast(template_brain, sitk.sitkFloat32)
    return sitk.Resample(brain, subject, subject_to_template, sitk.sitkLinear, 0.0)

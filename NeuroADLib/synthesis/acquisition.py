"""Acquisition augmentation: a healthy grid scan as another scanner and protocol would have
delivered it, so that models and their calibrations learn what a healthy brain looks like
beyond the training scanner.

Each effect is a named, seeded knob applied on the model grid (2 mm, (z, y, x) arrays, z the
axial axis), in the order an acquisition produces them: tissue contrast, bias field, slice
thickness, blur, noise; then the pipeline's own intensity normalisation, as a real scan would
get. The defaults come from the spread measured on real T1 scans from other scanners
(`benchmarks/scanner_shift.py`, README "Scanner robustness"): grey/white contrast ratios up to
0.89 against the cohort's 0.80, clinical slices up to 6 mm, residual bias after N4 and a
brightness scale set by a few bright voxels (fat, vessels) within the brain mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..preprocessing.harmonisation import smooth_in_brain
from ..preprocessing.intensity import normalise_in_brain


@dataclass(frozen=True)
class AcquisitionConfig:
    """Ranges each effect is drawn from, and how often it is applied."""

    probability: float = 0.8  # each effect independently
    # Power applied to intensities (x ** gamma on the normalised scale): gamma < 1 raises the
    # grey/white ratio (0.80 ** 0.55 = 0.88, the real scans' 0.84-0.89 against IXI's 0.80),
    # gamma > 1 lowers it.
    contrast_gamma: tuple[float, float] = (0.55, 1.25)
    # Peak-to-peak amplitude (log scale) of a smooth multiplicative field over the brain: the
    # real scans needed corrections spreading 0.10-0.30 (5th-95th percentile of the gain)
    # where IXI scans needed 0.02-0.05.
    bias_amplitude: tuple[float, float] = (0.0, 0.3)
    bias_wavelength_mm: float = 120.0
    # Axial slice thickness (mm) of the simulated source, resampled back onto the grid.
    slice_thickness_mm: tuple[float, float] = (2.0, 6.5)
    blur_sigma_mm: tuple[float, float] = (0.0, 1.5)
    noise_std: tuple[float, float] = (0.0, 0.03)  # relative to the normalised scale
    # Share of the brain made bright (fat, vessels at the mask's edge) before normalisation:
    # moves the 99.5th-percentile scale as on the clinical demo scan.
    bright_rim_fraction: tuple[float, float] = (0.0, 0.02)
    spacing_mm: float = 2.0


def augment_acquisition(image: np.ndarray, brain: np.ndarray, seed: int,
                        config: AcquisitionConfig | None = None) -> tuple[np.ndarray, dict]:
    """The scan under a random acquisition (normalised like a preprocessed scan, zero outside
    the brain) and the drawn parameters (effects not drawn are absent)."""
    config = config or AcquisitionConfig()
    rng = np.random.default_rng(seed)
    brain = np.asarray(brain, bool)
    x = np.clip(np.asarray(image, np.float64), 0.0, None) * brain
    drawn: dict[str, float] = {}

    def use(name: str, bounds: tuple[float, float]) -> float | None:
        # Both draws happen for every effect, so one effect's choice never shifts another's.
        applied, value = rng.random() < config.probability, rng.uniform(*bounds)
        if applied:
            drawn[name] = float(value)
            return float(value)
        return None

    if (gamma := use("contrast_gamma", config.contrast_gamma)) is not None:
        x = np.power(x, gamma)
    if (amplitude := use("bias_amplitude", config.bias_amplitude)) is not None:
        x = x * bias_field(brain.shape, amplitude, config.bias_wavelength_mm / config.spacing_mm,
                           rng)
    if (thickness := use("slice_thickness_mm", config.slice_thickness_mm)) is not None:
        x = thick_slices(x, thickness / config.spacing_mm)
    if (sigma := use("blur_sigma_mm", config.blur_sigma_mm)) is not None:
        x = ndimage.gaussian_filter(x, sigma / config.spacing_mm)
    if (noise := use("noise_std", config.noise_std)) is not None:
        x = x + rng.normal(0.0, noise, x.shape)
    if (rim := use("bright_rim_fraction", config.bright_rim_fraction)) is not None:
        x = _bright_rim(x, brain, rim, rng)
    x = np.clip(x, 0.0, None) * brain
    normalised, _ = normalise_in_brain(x, brain)
    return normalised, drawn


def sharpen(image: np.ndarray, brain: np.ndarray, amount: float, sigma_voxels: float = 1.0
            ) -> np.ndarray:
    """The scan as a sharper acquisition delivers it: unsharp masking inside the brain,
    x + amount (x - G(x)) with G a Gaussian of `sigma_voxels` (normalised inside the brain, so
    that the brain's edge is not sharpened against the zeros outside), clipped at zero. A
    resampled cohort is smoother than a 1 mm scan brought onto the grid once; blurring a scan
    cannot make it sharper, so this is how a healthy scan is made as sharp as those."""
    brain = np.asarray(brain, bool)
    x = np.asarray(image, np.float32)
    detail = x - smooth_in_brain(x, brain, sigma_voxels)
    return (np.clip(x + amount * detail, 0.0, None) * brain).astype(np.float32)


def bias_field(shape: tuple[int, ...], amplitude: float, wavelength_voxels: float,
               rng: np.random.Generator) -> np.ndarray:
    """A smooth positive field exp(a * f), f a random field on a lattice `wavelength_voxels`
    apart interpolated linearly (cubic interpolation took half a second more per scan for a
    field this smooth), scaled to [-1/2, 1/2], so that its peak-to-peak ratio is
    exp(amplitude)."""
    coarse = [max(2, int(round(n / wavelength_voxels)) + 1) for n in shape]
    field = ndimage.zoom(rng.standard_normal(coarse), [n / c for n, c in zip(shape, coarse,
                                                                              strict=True)],
                         order=1, mode="nearest")[tuple(slice(0, n) for n in shape)]
    span = float(field.max() - field.min()) or 1.0
    return np.exp(amplitude * ((field - field.min()) / span - 0.5))


def thick_slices(x: np.ndarray, thickness_voxels: float) -> np.ndarray:
    """Axial slices `thickness_voxels` thick (a box slice profile, slices edge to edge), then
    linear interpolation back onto the grid, as a thick-slice scan resampled to 2 mm looks."""
    if thickness_voxels <= 1.0:
        return x
    profile = ndimage.uniform_filter1d(x, size=max(1, int(round(thickness_voxels))), axis=0,
                                       mode="nearest")
    positions = np.arange(0.0, x.shape[0] - 1 + 1e-9, thickness_voxels)
    slices = ndimage.map_coordinates(profile, _axial_coordinates(positions, x.shape), order=1,
                                     mode="nearest")
    back = np.clip(np.arange(x.shape[0]) / thickness_voxels, 0, len(positions) - 1)
    return ndimage.map_coordinates(slices, _axial_coordinates(back, slices.shape), order=1,
                                   mode="nearest")


def _axial_coordinates(axial: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    grid = np.meshgrid(axial, np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
    return np.stack(grid)


def _bright_rim(x: np.ndarray, brain: np.ndarray, fraction: float,
                rng: np.random.Generator) -> np.ndarray:
    """Brighten a patch of the brain's outer 4 mm holding `fraction` of the brain's voxels
    (those nearest a random point of that rim) to 1.5 x the brain's 99th percentile: fat or
    vessels left inside a mask, as at the frontal base of the clinical demo scan."""
    rim = brain & (ndimage.distance_transform_edt(brain) <= 2.0)
    points = np.argwhere(rim)
    count = min(len(points), int(round(fraction * brain.sum())))
    if count == 0:
        return x
    centre = points[rng.integers(len(points))]
    nearest = points[np.argsort(((points - centre) ** 2).sum(axis=1))[:count]]
    bright = x.copy()
    bright[tuple(nearest.T)] = np.maximum(x[tuple(nearest.T)], 1.5 * np.percentile(x[brain],
                                                                                    99.0))
    return bright

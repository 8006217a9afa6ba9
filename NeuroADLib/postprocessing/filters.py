"""Filters that turn a raw residual into a cleaner anomaly map or segmentation.

Volumes are numpy arrays in (z, y, x) order and brain masks are boolean. The filters wrap
scipy.ndimage so their behaviour (borders, ties) is the well-documented scipy one; the default
parameters are those of the diffusion-model anomaly-detection papers.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy import ndimage


def median_filter(volume: np.ndarray, size: int = 5) -> np.ndarray:
    """Median over a `size`^3 cube (papers use 5): removes isolated bright residual voxels
    while keeping the edges of larger anomalies."""
    return ndimage.median_filter(np.asarray(volume), size=size)


def erode_brain_mask(mask: np.ndarray, iterations: int = 3) -> np.ndarray:
    """The brain mask eroded `iterations` times by the 6-connected ball of radius 1, so that
    reconstruction errors at the skull boundary are not scored (cDDPM uses 3, the
    pathology-conditioned LDM paper 6). `iterations=0` returns the mask unchanged."""
    mask = np.asarray(mask, dtype=bool)
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if iterations == 0:
        # scipy reads iterations=0 as "erode until nothing changes".
        return mask.copy()
    ball = ndimage.generate_binary_structure(mask.ndim, 1)
    return ndimage.binary_erosion(mask, structure=ball, iterations=iterations)


def remove_small_components(
    binary: np.ndarray, min_size: int = 8, connectivity: int = 3
) -> np.ndarray:
    """`binary` without its connected components of fewer than `min_size` voxels (papers drop
    components of <= 7 voxels as noise). `connectivity` is scipy's: 1 = faces, 2 = + edges,
    3 = + corners (the full 3x3x3 neighbourhood, the default)."""
    binary = np.asarray(binary, dtype=bool)
    structure = ndimage.generate_binary_structure(binary.ndim, connectivity)
    components, _ = ndimage.label(binary, structure=structure)
    sizes = np.bincount(components.ravel())
    keep = sizes >= min_size
    keep[0] = False  # label 0 is the background
    return keep[components]


def shift_aligned_residual(
    image: np.ndarray, reconstruction: np.ndarray, max_shift: int = 2
) -> np.ndarray:
    """For every voxel v, min over integer shifts s in [-k, k]^3 of |image(v) - recon(v + s)|
    with k = `max_shift` (eq. 8 of the pathology-conditioned LDM paper): a reconstruction that
    is only misaligned by up to k voxels leaves no residual. Outside the volume the
    reconstruction is extended with its edge values, not wrapped around."""
    image = np.asarray(image, dtype=np.float64)
    reconstruction = np.asarray(reconstruction, dtype=np.float64)
    if image.shape != reconstruction.shape:
        raise ValueError(f"image {image.shape} and reconstruction {reconstruction.shape} "
                         "differ in shape")
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    k = max_shift
    padded = np.pad(reconstruction, k, mode="edge")
    residual = np.full(image.shape, np.inf)
    for shift in itertools.product(range(-k, k + 1), repeat=image.ndim):
        # padded[v + k + s] == reconstruction(v + s), clamped to the edge.
        window = tuple(
            slice(k + s, k + s + n) for s, n in zip(shift, image.shape, strict=True)
        )
        np.minimum(residual, np.abs(image - padded[window]), out=residual)
    return residual


def gaussian_smooth(volume: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with standard deviation `sigma` voxels (scipy's gaussian_filter)."""
    return ndimage.gaussian_filter(np.asarray(volume, dtype=np.float64), sigma)


def clip_and_rescale(
    volume: np.ndarray, clip_max: float | None = None, mask: np.ndarray | None = None
) -> np.ndarray:
    """`volume` clipped to [0, clip_max] (no upper bound when None), then min-max rescaled to
    [0, 1] with the minimum and maximum inside `mask` (MAD-AD clips at 0.25 then rescales).
    Voxels outside the mask are set to 0; a constant map becomes all zeros."""
    clipped = np.clip(np.asarray(volume, dtype=np.float64), 0.0, clip_max)
    mask = np.ones(clipped.shape, bool) if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != clipped.shape:
        raise ValueError(f"mask {mask.shape} and volume {clipped.shape} differ in shape")
    if not mask.any():
        raise ValueError("mask is empty")
    low, high = clipped[mask].min(), clipped[mask].max()
    scale = high - low
    rescaled = (clipped - low) / scale if scale > 0 else np.zeros_like(clipped)
    return np.where(mask, rescaled, 0.0)


def filtered_in_eroded_brain(volume: np.ndarray, brain: np.ndarray, median_size: int,
                             erosion: int, gaussian_sigma: float = 0.0) -> np.ndarray:
    """A residual map's usual post-processing (cDDPM section 4.3, THOR, AutoDDPM): a median
    filter of side `median_size` (1: none), then a Gaussian of `gaussian_sigma` voxels (0:
    none, the papers'), then zero outside the brain mask eroded `erosion` times; float32."""
    if median_size > 1:
        volume = median_filter(volume, median_size)
    if gaussian_sigma > 0:
        volume = gaussian_smooth(volume, gaussian_sigma)
    return (volume * erode_brain_mask(np.asarray(brain) > 0, erosion)).astype(np.float32)

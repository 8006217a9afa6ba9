"""Synthetic lesions with exact ground truth on healthy scans (eq. 5-6 of the pathology-
conditioned LDM paper, shapes after UNA).

One lesion: an initial probability map P0 (a real lesion mask from the library, randomly
flipped, or a thresholded Perlin blob), placed at a random brain position, reshaped by the
divergence-free flow of `fluid.advect_diffuse` inside the brain, binarised at a random level in
[0.2, 0.5], then written into the image as x_p = x_h + dx * P with dx ~ N(-mu_w/2, mu_w/2)
(mu_w: mean white-matter intensity; hypo-intense on T1, hyper-intense on T2/FLAIR), the sign
flipped with probability 0.2 (eq. 6). Everything is drawn from one seeded generator.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from .fluid import advect_diffuse, random_velocity
from .perlin import perlin_noise

SIGN_BY_CONTRAST = {"t1": -1.0, "t1c": -1.0, "t2": 1.0, "flair": 1.0}


@dataclass(frozen=True)
class SynthesisConfig:
    """The knobs the papers vary, with their defaults."""

    contrast: str = "t1"
    lesions: tuple[int, int] = (1, 4)  # how many per scan (inclusive range)
    displacement_voxels: tuple[float, float] = (1.0, 4.0)  # flow time x top speed
    binarise_at: tuple[float, float] = (0.2, 0.5)  # UNA's binarisation levels
    sign_flip_probability: float = 0.2  # eq. 6
    perlin_radius_voxels: tuple[float, float] = (2.0, 9.0)  # random-shape lesion size
    diffusion: float = 0.0  # UNA leaves the diffusion term unused
    margin_voxels: int = 6  # room left around a lesion for the flow
    min_lesion_voxels: int = 20  # smaller draws (a blob that binarised away) are redrawn
    max_draws: int = 10


@dataclass
class Synthetic:
    image: np.ndarray
    mask: np.ndarray
    probability: np.ndarray


def load_library(folder: str | os.PathLike) -> list[np.ndarray]:
    """Lesion shapes: every connected component of every mask (*.nii.gz, *.nrrd, ...) in
    `folder`, cropped to its bounding box. Masks must be on the model grid's spacing."""
    import SimpleITK as sitk  # only here: synthesis itself runs where SimpleITK is absent

    shapes = []
    for path in sorted(Path(folder).iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(path))) > 0
        labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
        for box, k in zip(ndimage.find_objects(labels), range(1, count + 1), strict=True):
            shapes.append(labels[box] == k)
    return shapes


def perlin_blob(radius: float, rng: np.random.Generator) -> np.ndarray:
    """A random lesion shape: Perlin noise thresholded inside a sphere of `radius` voxels."""
    size = int(np.ceil(2 * radius)) + 3
    centre = (size - 1) / 2.0
    distance = np.sqrt(sum((g - centre) ** 2 for g in np.indices((size,) * 3)))
    noise = perlin_noise((size,) * 3, (2, 2, 2), rng)
    blob = (1.0 - distance / radius) + 0.5 * noise > 0.3
    blob = ndimage.binary_opening(blob)
    labels, count = ndimage.label(blob)
    if count == 0:
        return distance <= radius / 2.0
    sizes = ndimage.sum_labels(blob, labels, range(1, count + 1))
    return labels == 1 + int(np.argmax(sizes))


def draw_shape(rng: np.random.Generator, library: list[np.ndarray] | None,
               config: SynthesisConfig) -> np.ndarray:
    """A lesion's initial shape: a real lesion from the library half of the time (when there
    is one), else a Perlin blob of a random radius."""
    if library and rng.random() < 0.5:
        return library[rng.integers(len(library))]
    return perlin_blob(rng.uniform(*config.perlin_radius_voxels), rng)


def white_matter_mean(image: np.ndarray, brain: np.ndarray) -> float:
    """Mean white-matter intensity, estimated as the mean of the brightest half of the brain
    (white matter is the brightest tissue on T1 after normalisation; on T2/FLAIR this is the
    bright half of the brain, which sets the same scale)."""
    values = image[brain]
    return float(values[values >= np.median(values)].mean())


def place_shape(shape: np.ndarray, brain: np.ndarray, rng: np.random.Generator,
                margin: int) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """A random position for `shape` (centre on a brain voxel far enough from the edge):
    the slices of the working box (shape plus margin) and P0 inside that box."""
    for axis in range(3):
        if rng.random() < 0.5:
            shape = np.flip(shape, axis=axis)
    inner = ndimage.binary_erosion(brain, iterations=2)
    candidates = np.argwhere(inner)
    if len(candidates) == 0:
        return None
    centre = candidates[rng.integers(len(candidates))]
    box, p0_box = [], []
    for axis in range(3):
        half = shape.shape[axis] // 2
        start = centre[axis] - half - margin
        stop = start + shape.shape[axis] + 2 * margin
        box.append(slice(max(start, 0), min(stop, brain.shape[axis])))
        p0_box.append(slice(box[-1].start - start, box[-1].stop - start))
    p0 = np.pad(shape.astype(float), margin)[tuple(p0_box)]
    return tuple(box), p0


def add_lesion(
    image: np.ndarray,
    brain: np.ndarray,
    mask: np.ndarray,
    probability: np.ndarray,
    shape: np.ndarray,
    mu_w: float,
    rng: np.random.Generator,
    config: SynthesisConfig,
) -> bool:
    """Place, flow, binarise and encode one lesion, updating the arrays in place; False (and
    nothing changed) when the lesion came out smaller than `config.min_lesion_voxels`."""
    placed = place_shape(shape, brain, rng, config.margin_voxels)
    if placed is None:
        return False
    box, p0 = placed
    inside = brain[box]
    velocity = random_velocity(p0.shape, rng)
    duration = rng.uniform(*config.displacement_voxels)
    diffusion = 0.0
    if config.diffusion > 0:
        diffusion = config.diffusion * perlin_noise(p0.shape, (2, 2, 2), rng) ** 2
    p = advect_diffuse(p0 * inside, velocity, inside, duration, diffusion)
    lesion = p > rng.uniform(*config.binarise_at)
    if lesion.sum() < config.min_lesion_voxels:
        return False
    sign = SIGN_BY_CONTRAST[config.contrast]
    delta = rng.normal(sign * mu_w / 2.0, mu_w / 2.0)
    if rng.random() < config.sign_flip_probability:
        delta = -delta
    region = image[box]
    region[lesion] = np.clip(region[lesion] + delta * p[lesion], 0.0, 1.0)  # eq. 5
    mask[box] |= lesion
    probability[box] = np.maximum(probability[box], np.where(lesion, p, 0.0))
    return True


def synthesize(
    image: np.ndarray,
    brain: np.ndarray,
    seed: int,
    library: list[np.ndarray] | None = None,
    config: SynthesisConfig | None = None,
) -> Synthetic:
    """Lesion a healthy (normalised, 0..1) grid image: returns the lesioned image, the lesion
    mask and the lesion probability map. Deterministic for a seed."""
    config = config or SynthesisConfig()
    if config.contrast not in SIGN_BY_CONTRAST:
        raise ValueError(f"contrast must be one of {sorted(SIGN_BY_CONTRAST)}")
    rng = np.random.default_rng(seed)
    brain = brain.astype(bool)
    lesioned = image.astype(np.float32).copy()
    mask = np.zeros(image.shape, bool)
    probability = np.zeros(image.shape, np.float32)
    mu_w = white_matter_mean(image, brain)
    for _ in range(rng.integers(config.lesions[0], config.lesions[1] + 1)):
        for _ in range(config.max_draws):
            shape = draw_shape(rng, library, config)
            if add_lesion(lesioned, brain, mask, probability, shape, mu_w, rng, config):
                break
    return Synthetic(lesioned, mask, probability)

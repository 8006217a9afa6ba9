"""Seeded 3D Perlin (gradient) noise: smooth random fields for lesion shapes and for the
potentials whose curl drives the anomaly flow."""

from __future__ import annotations

import numpy as np


def _fade(t: np.ndarray) -> np.ndarray:
    """Perlin's quintic interpolant 6t^5 - 15t^4 + 10t^3 (zero first and second derivative at
    the lattice points, so the noise is C2-smooth)."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin_noise(
    shape: tuple[int, int, int], cells: tuple[int, int, int], rng: np.random.Generator
) -> np.ndarray:
    """Perlin noise on `shape` with `cells` lattice cells per axis; values roughly in [-1, 1].

    Random unit gradients sit on the (cells + 1) lattice; each voxel blends the dot products of
    its cell's eight corner gradients with its offsets from them.
    """
    gradients = rng.normal(size=(*(c + 1 for c in cells), 3))
    gradients /= np.linalg.norm(gradients, axis=-1, keepdims=True)
    axes = [np.arange(n) * c / n for n, c in zip(shape, cells, strict=True)]
    position = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    corner0 = np.floor(position).astype(int)
    offset = position - corner0
    weight = _fade(offset)
    noise = np.zeros(shape)
    for corner in np.ndindex(2, 2, 2):
        step = np.array(corner)
        g = gradients[tuple((corner0 + step)[..., k] for k in range(3))]
        dot = np.sum(g * (offset - step), axis=-1)
        blend = np.prod(np.where(step == 1, weight, 1.0 - weight), axis=-1)
        noise += blend * dot
    return noise * np.sqrt(3.0)

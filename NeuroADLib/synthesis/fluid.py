"""Fluid-driven anomaly randomization: eq. 3-4 of the pathology-conditioned LDM paper, after
UNA (Liu et al., CVPR 2025).

    dP/dt = -(curl Psi) . grad P + div(Phi^2 grad P),   P(x, 0) = P0,   dP/dn = 0 on the brain
    boundary.

The velocity is the curl of three Perlin potentials, so it is divergence-free (incompressible:
the flow reshapes a lesion without creating or destroying it). Advection uses first-order
upwind differences with an explicit CFL-limited step; the Neumann condition is imposed by
giving every neighbour outside the brain the centre voxel's own value (zero flux across the
boundary), so the anomaly never leaves the brain. UNA's code uses pure advection (its diffusion
term is unused); diffusion is available here with `diffusion > 0`.
"""

from __future__ import annotations

import numpy as np

from .perlin import perlin_noise

CFL = 0.5


def curl(psi_z: np.ndarray, psi_y: np.ndarray, psi_x: np.ndarray) -> np.ndarray:
    """Curl of a vector potential given by its (z, y, x) components on a (z, y, x) grid, with
    central differences; returns the velocity components stacked as (3, z, y, x)."""
    d = {name: np.gradient(field) for name, field in (("z", psi_z), ("y", psi_y), ("x", psi_x))}
    # np.gradient returns derivatives along (axis 0 = z, axis 1 = y, axis 2 = x).
    v_z = d["x"][1] - d["y"][2]
    v_y = d["z"][2] - d["x"][0]
    v_x = d["y"][0] - d["z"][1]
    return np.stack([v_z, v_y, v_x])


def divergence(velocity: np.ndarray) -> np.ndarray:
    return sum(np.gradient(velocity[axis], axis=axis) for axis in range(3))


def random_velocity(shape: tuple[int, int, int], rng: np.random.Generator,
                    cells: tuple[int, int, int] = (2, 2, 2)) -> np.ndarray:
    """Divergence-free velocity: the curl of three Perlin potentials, scaled so that its
    largest speed is one voxel per unit time."""
    velocity = curl(*(perlin_noise(shape, cells, rng) for _ in range(3)))
    return velocity / max(float(np.abs(velocity).max()), 1e-12)


def _neighbours(p: np.ndarray, inside: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Values one voxel below and above along `axis`; a neighbour outside the domain takes the
    centre's value (zero normal derivative)."""
    pad = [(0, 0)] * 3
    pad[axis] = (1, 1)
    padded_p = np.pad(p, pad, mode="edge")
    padded_in = np.pad(inside, pad, mode="constant", constant_values=False)
    lower = [slice(None)] * 3
    upper = [slice(None)] * 3
    lower[axis], upper[axis] = slice(0, -2), slice(2, None)
    below = np.where(padded_in[tuple(lower)], padded_p[tuple(lower)], p)
    above = np.where(padded_in[tuple(upper)], padded_p[tuple(upper)], p)
    return below, above


def _face_diffusivity(d: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Diffusivity on the faces below and above each voxel (mean of the two voxels)."""
    below, above = _neighbours(d, np.ones(d.shape, bool), axis)
    return 0.5 * (d + below), 0.5 * (d + above)


def advect_diffuse(
    p0: np.ndarray,
    velocity: np.ndarray,
    inside: np.ndarray,
    duration: float,
    diffusion: np.ndarray | float = 0.0,
) -> np.ndarray:
    """Integrate eq. 3 from P0 for `duration` (time units; the velocity is in voxels per unit
    time) inside the boolean domain `inside`: explicit Euler, upwind advection, diffusion
    div(D grad P) with D = Phi^2 in flux form (zero flux through the domain boundary)."""
    p = np.where(inside, p0, 0.0).astype(np.float64)
    diffusion = np.broadcast_to(np.asarray(diffusion, dtype=np.float64), p.shape)
    speed = np.abs(velocity).sum(axis=0).max()
    limit = CFL / max(speed, 1e-12)
    if diffusion.max() > 0:
        limit = min(limit, CFL / (6.0 * diffusion.max()))
    steps = max(1, int(np.ceil(duration / limit)))
    dt = duration / steps
    for _ in range(steps):
        change = np.zeros_like(p)
        for axis in range(3):
            below, above = _neighbours(p, inside, axis)
            v = velocity[axis]
            # Upwind: information comes from where the flow comes from.
            change -= np.where(v > 0, v * (p - below), v * (above - p))
            if diffusion.max() > 0:
                d_below, d_above = _face_diffusivity(diffusion, axis)
                change += d_above * (above - p) - d_below * (p - below)
        p = np.clip(p + dt * change, 0.0, 1.0) * inside
    return p

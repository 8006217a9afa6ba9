"""Fluid-driven anomaly randomization: synthetic lesions with exact ground truth."""

from .fluid import advect_diffuse, curl, divergence, random_velocity
from .lesions import SynthesisConfig, Synthetic, load_library, synthesize
from .perlin import perlin_noise

__all__ = [
    "SynthesisConfig",
    "Synthetic",
    "advect_diffuse",
    "curl",
    "divergence",
    "load_library",
    "perlin_noise",
    "random_velocity",
    "synthesize",
]

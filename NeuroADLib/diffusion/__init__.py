"""Diffusion mechanics shared by every method: the forward process, the true posterior, the
learned reverse process with learned variance, Gaussian KL and the hybrid loss (`gaussian`);
schedules, prediction types and samplers (`process`); Gaussian and simplex noise (`noise`)."""

from .gaussian import (
    GaussianDiffusion,
    hybrid_loss,
    normal_kl,
)
from .noise import SimplexNoise, gaussian_noise

__all__ = ["GaussianDiffusion", "SimplexNoise", "gaussian_noise", "hybrid_loss", "normal_kl"]

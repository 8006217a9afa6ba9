"""Diffusion mechanics shared by every method: the forward process, the true posterior, the
learned reverse process with learned variance, Gaussian KL and the hybrid loss."""

from .gaussian import (
    GaussianDiffusion,
    hybrid_loss,
    normal_kl,
)

__all__ = ["GaussianDiffusion", "hybrid_loss", "normal_kl"]

"""Gaussian diffusion with learned variance (Ho et al. 2020; Nichol & Dhariwal 2021).

The noise schedule comes from MONAI's DDPMScheduler; what MONAI lacks is written here once:
the true posterior q(z_{t-1} | z_t, z_0), the model's reverse step p_theta(z_{t-1} | z_t) with
the "learned range" variance (log Sigma = v log beta_t + (1 - v) log beta~_t, v in [0, 1]),
the KL between two diagonal Gaussians (the voxel-wise KL_U of CADD's Algorithm 1), and the
hybrid training loss L_simple + lambda L_vlb. All tensors are torch; t is a (batch,) tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .process import DiffusionConfig, DiffusionProcess


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), element-wise (nats)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _at(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] shaped to broadcast against `like` (batch first)."""
    return values.to(like.device)[t].float().reshape(-1, *([1] * (like.dim() - 1)))


@dataclass
class GaussianDiffusion:
    """A DDPM forward process of T steps with a linear beta schedule (CADD: T = 1000,
    beta 0.0015 -> 0.0195)."""

    num_timesteps: int = 1000
    beta_start: float = 0.0015
    beta_end: float = 0.0195

    def to_dict(self) -> dict:
        """What a bundle records of its diffusion process (the loader builds from it)."""
        return {"schedule": "linear_beta", "num_timesteps": self.num_timesteps,
                "beta_start": self.beta_start, "beta_end": self.beta_end}

    @classmethod
    def from_dict(cls, values: dict) -> GaussianDiffusion:
        """The process a bundle recorded; a schedule other than linear is refused."""
        values = dict(values)
        schedule = values.pop("schedule", "linear_beta")
        if schedule != "linear_beta":
            raise ValueError(f"GaussianDiffusion has a linear beta schedule, not {schedule!r}.")
        return cls(**values)

    def __post_init__(self) -> None:
        from monai.networks.schedulers import DDPMScheduler

        scheduler = DDPMScheduler(num_train_timesteps=self.num_timesteps,
                                  schedule="linear_beta", beta_start=self.beta_start,
                                  beta_end=self.beta_end)
        betas = scheduler.betas.double()
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        previous = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        self.betas = betas
        self.alphas_cumprod = alphas_cumprod
        self.alphas_cumprod_prev = previous
        # beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t); its log is clipped at t = 0 (where
        # it is 0) to the value at t = 1, as in the improved-DDPM code.
        posterior_variance = betas * (1.0 - previous) / (1.0 - alphas_cumprod)
        self.posterior_variance = posterior_variance
        self.posterior_log_variance = torch.log(
            torch.cat([posterior_variance[1:2], posterior_variance[1:]]))
        self.posterior_mean_coef_z0 = betas * torch.sqrt(previous) / (1.0 - alphas_cumprod)
        self.posterior_mean_coef_zt = (1.0 - previous) * torch.sqrt(1.0 - betas) / (
            1.0 - alphas_cumprod)
        self._process = DiffusionProcess(DiffusionConfig(
            num_timesteps=self.num_timesteps, schedule="linear", beta_start=self.beta_start,
            beta_end=self.beta_end))

    def q_sample(self, z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps (forward process, closed form)."""
        abar = _at(self.alphas_cumprod, t, z0)
        return abar.sqrt() * z0 + (1.0 - abar).sqrt() * noise

    def q_posterior(self, z0: torch.Tensor, zt: torch.Tensor, t: torch.Tensor):
        """Mean and log-variance of q(z_{t-1} | z_t, z_0)."""
        mean = _at(self.posterior_mean_coef_z0, t, zt) * z0 + _at(
            self.posterior_mean_coef_zt, t, zt) * zt
        return mean, _at(self.posterior_log_variance, t, zt).expand_as(zt)

    def predict_z0(self, zt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        abar = _at(self.alphas_cumprod, t, zt)
        return (zt - (1.0 - abar).sqrt() * eps) / abar.sqrt()

    def p_mean_variance(self, model_output: torch.Tensor, zt: torch.Tensor, t: torch.Tensor):
        """Mean and log-variance of p_theta(z_{t-1} | z_t) from a network output holding
        [eps, v] along channels (v in [-1, 1] sets the learned-range variance)."""
        eps, v = model_output.chunk(2, dim=1)
        fraction = (v + 1.0) / 2.0
        log_variance = fraction * _at(torch.log(self.betas), t, zt) + (1.0 - fraction) * _at(
            self.posterior_log_variance, t, zt)
        mean, _ = self.q_posterior(self.predict_z0(zt, t, eps), zt, t)
        return mean, log_variance

    def p_sample(self, model_output: torch.Tensor, zt: torch.Tensor, t: torch.Tensor,
                 noise: torch.Tensor) -> torch.Tensor:
        """One ancestral step z_t -> z_{t-1} (no noise added at t = 0)."""
        mean, log_variance = self.p_mean_variance(model_output, zt, t)
        nonzero = (t != 0).float().reshape(-1, *([1] * (zt.dim() - 1)))
        return mean + nonzero * torch.exp(0.5 * log_variance) * noise

    def p_sample_respaced(self, model_output: torch.Tensor, zt: torch.Tensor, t: int,
                          t_prev: int, noise: torch.Tensor) -> torch.Tensor:
        """One ancestral step between two levels of a respaced chain, z_t -> z_{t_prev}
        (t_prev = -1: the clean latent, no noise), as improved DDPM samples with fewer steps
        (Nichol & Dhariwal 2021, section 4): beta = 1 - abar_t / abar_prev, and the learned
        range spans that beta and its beta~. With t_prev = t - 1 it is `p_sample`."""
        eps, v = model_output.chunk(2, dim=1)
        z0 = self.predict_z0(zt, torch.full((len(zt),), t, device=zt.device), eps)
        return self._process.ddpm_step(z0, zt, t, t_prev, noise, "learned_range", v)

    def voxel_kl(self, model_output: torch.Tensor, z0: torch.Tensor, zt: torch.Tensor,
                 t: torch.Tensor) -> torch.Tensor:
        """KL(q(z_{t-1} | z_t, z_0) || p_theta(z_{t-1} | z_t)) per latent voxel (CADD's KL_U),
        in nats."""
        true_mean, true_log_variance = self.q_posterior(z0, zt, t)
        model_mean, model_log_variance = self.p_mean_variance(model_output, zt, t)
        return normal_kl(true_mean, true_log_variance, model_mean, model_log_variance)


def hybrid_loss(diffusion: GaussianDiffusion, model_output: torch.Tensor, z0: torch.Tensor,
                zt: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                vlb_weight: float = 1e-3) -> torch.Tensor:
    """L_hybrid = ||eps - eps_theta||^2 + vlb_weight * L_vlb (Nichol & Dhariwal eq. 16): the
    variance learns through L_vlb with the mean's gradient stopped, as in their code. L_vlb at
    t = 0 is approximated by the KL term (the latent is continuous, no decoder likelihood)."""
    eps, v = model_output.chunk(2, dim=1)
    simple = ((eps - noise) ** 2).mean()
    frozen = torch.cat([eps.detach(), v], dim=1)
    kl = diffusion.voxel_kl(frozen, z0, zt, t).mean() / math.log(2.0)
    return simple + vlb_weight * kl

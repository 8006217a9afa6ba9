"""A method-agnostic diffusion process: noise schedule, prediction type, the (masked) forward
process, DDIM steps with eta, respacing, and the RePaint-style known-region blend.

The schedule itself comes from MONAI's schedulers (linear, scaled-linear, cosine); what they
lack is written here once: the forward process restricted to a mask (MAD-AD eq. 1-2), the
conversions between epsilon, x0 ("sample") and v predictions, a DDIM step from any pair of
levels (Song et al. 2021 eq. 12, sigma_t from eta), and the per-step blend of a known region
(RePaint, Lugmayr et al. 2022 eq. 8). Levels t are 0-based as in MONAI: t = 0 is the least
noisy, t = T - 1 the most; the level "before" 0 is the clean image (alpha-bar = 1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

SCHEDULES = {"linear": "linear_beta", "scaled_linear": "scaled_linear_beta",
             "cosine": "cosine"}
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
VARIANCE_TYPES = ("fixed_small", "fixed_large", "learned_range")


@dataclass(frozen=True)
class DiffusionConfig:
    """What a bundle records of its diffusion process (MONAI's names for schedule parts)."""

    num_timesteps: int = 1000
    schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 2e-2
    prediction_type: str = "epsilon"

    def to_dict(self) -> dict:
        return asdict(self)


class DiffusionProcess:
    """Forward and reverse steps of a DDPM/DDIM with the schedule of `config`."""

    def __init__(self, config: DiffusionConfig) -> None:
        from monai.networks.schedulers import DDPMScheduler

        if config.schedule not in SCHEDULES:
            raise ValueError(f"Unknown schedule {config.schedule!r}; schedules: "
                             f"{', '.join(SCHEDULES)}.")
        if config.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"Unknown prediction type {config.prediction_type!r}; types: "
                             f"{', '.join(PREDICTION_TYPES)}.")
        arguments = {} if config.schedule == "cosine" else {
            "beta_start": config.beta_start, "beta_end": config.beta_end}
        scheduler = DDPMScheduler(num_train_timesteps=config.num_timesteps,
                                  schedule=SCHEDULES[config.schedule], **arguments)
        self.config = config
        self.alphas_cumprod = scheduler.alphas_cumprod.double()

    @property
    def num_timesteps(self) -> int:
        return self.config.num_timesteps

    def alpha_bar(self, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """alpha-bar_t broadcast against `like` (batch first); t = -1 is the clean image."""
        t = torch.as_tensor(t).reshape(-1)
        padded = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod])
        values = padded[(t + 1).cpu()].to(like.device, like.dtype)
        return values.reshape(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                 noised: torch.Tensor | None = None) -> torch.Tensor:
        """z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps where `noised` is 1, z0 where it is 0
        (MAD-AD eq. 2: only masked positions are diffused; no mask: everywhere)."""
        abar = self.alpha_bar(t, z0)
        zt = abar.sqrt() * z0 + (1.0 - abar).sqrt() * noise
        return zt if noised is None else noised * zt + (1.0 - noised) * z0

    def x0_and_eps(self, output: torch.Tensor, zt: torch.Tensor, t: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """The clean-image and noise estimates implied by a network output of this process's
        prediction type (e.g. MAD-AD eq. 7 for x0 prediction)."""
        abar = self.alpha_bar(t, zt)
        a, s = abar.sqrt(), (1.0 - abar).sqrt()
        if self.config.prediction_type == "epsilon":
            return (zt - s * output) / a, output
        if self.config.prediction_type == "sample":
            return output, (zt - a * output) / s
        return a * zt - s * output, s * zt + a * output  # v = a eps - s x0

    def target(self, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network learns to output at level t for this prediction type."""
        if self.config.prediction_type == "epsilon":
            return noise
        if self.config.prediction_type == "sample":
            return z0
        abar = self.alpha_bar(t, z0)
        return abar.sqrt() * noise - (1.0 - abar).sqrt() * z0

    def ddpm_step(self, x0: torch.Tensor, zt: torch.Tensor, t: int, t_prev: int,
                  noise: torch.Tensor, variance_type: str = "fixed_small",
                  v: torch.Tensor | None = None) -> torch.Tensor:
        """An ancestral step z_t -> z_{t_prev} from the posterior q(z_prev | z_t, x0) (Ho et al.
        eq. 6-7, with beta = 1 - abar_t / abar_prev between respaced levels): variance
        beta~ ("fixed_small"), beta ("fixed_large"), or exp(v log beta + (1 - v) log beta~)
        with v in [-1, 1] from the network ("learned_range", Nichol & Dhariwal eq. 15). No
        noise on the last step (t_prev = -1)."""
        if variance_type not in VARIANCE_TYPES:
            raise ValueError(f"Unknown variance type {variance_type!r}; types: "
                             f"{', '.join(VARIANCE_TYPES)}.")
        abar, abar_prev = self.alpha_bar(t, zt), self.alpha_bar(t_prev, zt)
        beta = 1.0 - abar / abar_prev
        mean = (abar_prev.sqrt() * beta * x0 + (1.0 - beta).sqrt() * (1.0 - abar_prev) * zt
                ) / (1.0 - abar)
        if t_prev < 0:
            return mean
        small = beta * (1.0 - abar_prev) / (1.0 - abar)
        if variance_type == "fixed_small":
            variance = small
        elif variance_type == "fixed_large":
            variance = beta
        else:
            if v is None:
                raise ValueError("a learned-range step needs the network's variance output v")
            fraction = (v + 1.0) / 2.0
            variance = torch.exp(fraction * torch.log(beta) + (1.0 - fraction) * torch.log(small))
        return mean + variance.sqrt() * noise

    def ddim_sigma(self, t: int, t_prev: int, eta: float, like: torch.Tensor) -> torch.Tensor:
        """sigma_t = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)
        (Song et al. eq. 16): 0 is deterministic DDIM, 1 the DDPM posterior's spread."""
        abar, abar_prev = self.alpha_bar(t, like), self.alpha_bar(t_prev, like)
        return eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).sqrt()

    def ddim_step(self, x0: torch.Tensor, eps: torch.Tensor, t: int, t_prev: int, eta: float,
                  noise: torch.Tensor | None = None) -> torch.Tensor:
        """z_{t_prev} = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma noise
        (Song et al. eq. 12); t_prev = -1 lands on the clean image."""
        abar_prev = self.alpha_bar(t_prev, x0)
        sigma = self.ddim_sigma(t, t_prev, eta, x0)
        z = abar_prev.sqrt() * x0 + (1.0 - abar_prev - sigma**2).clamp(min=0).sqrt() * eps
        if eta > 0:
            if noise is None:
                raise ValueError("a stochastic DDIM step (eta > 0) needs its noise")
            z = z + sigma * noise
        return z

    def renoise(self, z: torch.Tensor, t_from: int, t_to: int, noise: torch.Tensor
                ) -> torch.Tensor:
        """A forward jump z_{t_from} -> z_{t_to} (t_to > t_from): q(z_to | z_from) =
        N(sqrt(abar_to / abar_from) z, 1 - abar_to / abar_from); RePaint's resampling step."""
        ratio = self.alpha_bar(t_to, z) / self.alpha_bar(t_from, z)
        return ratio.sqrt() * z + (1.0 - ratio).sqrt() * noise

    def blend_known(self, z_unknown: torch.Tensor, z0_known: torch.Tensor, t: int,
                    keep: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """RePaint's per-step blend: the known region, noised to level t, where `keep` is 1;
        the model's sample elsewhere."""
        known = self.q_sample(z0_known, torch.tensor([t]), noise)
        return keep * known + (1.0 - keep) * z_unknown


def respaced_levels(num_timesteps: int, steps: int) -> list[int]:
    """`steps` levels a stride T // steps apart, ending at 0 (T = 10 with 10 steps: 9, 8,
    ..., 0): the stride MONAI's DDIM step takes from every level."""
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be from 1 to {num_timesteps}, not {steps}")
    stride = num_timesteps // steps
    return [level * stride for level in reversed(range(steps))]

"""CADD's inference inpainting (Algorithm 1) and the plain latent-diffusion reconstructions
it is compared with.

For every noise level U in {50, 100, ..., T_int}: noise the clean latent z_0 to z_U with a fixed
seed; compute the voxel-wise KL_U = KL(q(z_{U-1} | z_U, z_0) || p_theta(z_{U-1} | z_U, c)),
summed over latent channels; mask m = m_s AND m_v with m_s = KL_U above the subject's own 95th
percentile and m_v = KL_U above the healthy validation cohort's 95th percentile at that latent
position and U; denoise z_U to z_0^U; keep z_0 outside the mask: z^_0^U = m z_0^U + (1 - m) z_0.
The result is the average of z^_0^U over U (decoded by the caller).

Beyond the paper (measured in benchmarks): the chains are independent, so they run as one
batch (chain k joins when the countdown reaches its U); and `respacing` replaces each
ancestral chain by a chain on every `respacing`-th step, cutting network evaluations by that
factor: deterministic DDIM for CADD, respaced ancestral steps where a caller asks for them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..progress import StepCallback
from .gaussian import GaussianDiffusion

# model(z, index) -> [eps, v] with the covariates already bound. Timestep indices are 0-based
# as in the diffusion arrays: index i is the noise level of z_{i+1}, so z_U has index U - 1.
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class InpaintingSettings:
    t_int: int = 250  # 1000 (the full chain) for noisy clinical scans, as in the paper
    level_step: int = 50
    percentile: float = 95.0
    respacing: int = 1  # 1: the full ancestral chain of the paper
    seed: int = 42  # the paper's inference seed

    def __post_init__(self) -> None:
        if self.level_step % self.respacing:
            raise ValueError("respacing must divide level_step, so every chain starts on the "
                             "respaced schedule")

    @property
    def levels(self) -> list[int]:
        return list(range(self.level_step, self.t_int + 1, self.level_step))


def noised_latents(diffusion: GaussianDiffusion, z0: torch.Tensor, levels: list[int],
                   seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """z_U for every level (batch = levels) from one seeded noise draw per level, and the
    0-based timestep indices U - 1."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((len(levels), *z0.shape[1:]), generator=generator).to(z0)
    index = torch.tensor(levels, device=z0.device) - 1
    return diffusion.q_sample(z0.expand(len(levels), *z0.shape[1:]), index, noise), index


def kl_maps(diffusion: GaussianDiffusion, model: Denoiser, z0: torch.Tensor,
            settings: InpaintingSettings) -> torch.Tensor:
    """KL_U per latent position (summed over channels) for every level: (levels, D, H, W).
    The same call on healthy validation latents gives the cohort percentiles."""
    zu, index = noised_latents(diffusion, z0, settings.levels, settings.seed)
    output = model(zu, index)
    return diffusion.voxel_kl(output, z0.expand_as(zu), zu, index).sum(dim=1)


def inpainting_masks(kl: torch.Tensor, cohort_percentile: torch.Tensor | None,
                     percentile: float) -> torch.Tensor:
    """m = m_s AND m_v (CADD Algorithm 1); without cohort percentiles, m = m_s."""
    subject = torch.quantile(kl.flatten(1), percentile / 100.0, dim=1)
    mask = kl > subject[:, None, None, None]
    if cohort_percentile is not None:
        mask &= kl > cohort_percentile
    return mask


def denoise_chains(diffusion: GaussianDiffusion, model: Denoiser, zu: torch.Tensor,
                   levels: list[int], respacing: int, seed: int,
                   on_step: StepCallback | None = None, ancestral: bool | None = None
                   ) -> torch.Tensor:
    """Run every chain from its z_U to z_0 in one batch; chain k joins when the countdown of
    timestep indices reaches U_k - 1. `ancestral`: DDPM steps (respaced as in improved DDPM
    when `respacing` > 1), or deterministic DDIM steps when False; None, CADD's rule:
    ancestral on the full chain, DDIM when respaced."""
    if ancestral is None:
        ancestral = respacing == 1
    generator = torch.Generator().manual_seed(seed + 1)
    z = zu.clone()
    start = torch.tensor(levels, device=zu.device) - 1
    schedule = list(range(max(levels) - 1, -1, -respacing))
    for position, index in enumerate(schedule):
        active = start >= index
        t = torch.full((int(active.sum()),), index, device=zu.device)
        output = model(z[active], t)
        following = schedule[position + 1] if position + 1 < len(schedule) else -1
        if not ancestral:
            z[active] = _ddim_step(diffusion, output, z[active], t, following)
        else:
            noise = torch.randn(z[active].shape, generator=generator).to(z)
            if respacing == 1:
                z[active] = diffusion.p_sample(output, z[active], t, noise)
            else:
                z[active] = diffusion.p_sample_respaced(output, z[active], index, following,
                                                        noise)
        if on_step is not None:
            on_step(position + 1, len(schedule))
    return z


def _ddim_step(diffusion: GaussianDiffusion, output: torch.Tensor, z: torch.Tensor,
               t: torch.Tensor, following: int) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) jump from index t to index `following` (-1: to z_0)."""
    eps, _ = output.chunk(2, dim=1)
    z0 = diffusion.predict_z0(z, t, eps)
    if following < 0:
        return z0
    abar = diffusion.alphas_cumprod[following].float().to(z)
    return abar.sqrt() * z0 + (1 - abar).sqrt() * eps


def kl_guided_inpainting(diffusion: GaussianDiffusion, model: Denoiser, z0: torch.Tensor,
                         settings: InpaintingSettings, cohort_percentiles: torch.Tensor | None,
                         on_step: StepCallback | None = None) -> dict[str, torch.Tensor]:
    """Algorithm 1 for one latent z0 (1, C, D, H, W); `cohort_percentiles` (levels, D, H, W)
    from healthy validation subjects. Returns the inpainted latent (1, C, D, H, W), the masks
    and the KL maps."""
    levels = settings.levels
    kl = kl_maps(diffusion, model, z0, settings)
    masks = inpainting_masks(kl, cohort_percentiles, settings.percentile)
    zu, _ = noised_latents(diffusion, z0, levels, settings.seed)
    denoised = denoise_chains(diffusion, model, zu, levels, settings.respacing, settings.seed,
                              on_step)
    return {"latent": blended_latent(z0, denoised, masks), "masks": masks, "kl": kl}


def blended_latent(z0: torch.Tensor, denoised: torch.Tensor, masks: torch.Tensor
                   ) -> torch.Tensor:
    """Algorithm 1, lines 120-122: z^_0 = mean over U of m_U * z_0^U + (1 - m_U) * z_0, for
    the chains' ends `denoised` (levels, C, D, H, W) and their masks (levels, D, H, W)."""
    keep = masks[:, None].float()
    return (keep * denoised + (1 - keep) * z0).mean(dim=0, keepdim=True)


def reconstruct(diffusion: GaussianDiffusion, model: Denoiser, z0: torch.Tensor,
                levels: list[int], respacing: int, seed: int,
                on_step: StepCallback | None = None, ancestral: bool | None = None
                ) -> torch.Tensor:
    """The LDM baselines: denoise from each level without inpainting and average
    (one level: LDM; several: LDM T_avg). `ancestral` as in `denoise_chains`."""
    zu, _ = noised_latents(diffusion, z0, levels, seed)
    return denoise_chains(diffusion, model, zu, levels, respacing, seed, on_step,
                          ancestral).mean(0, keepdim=True)

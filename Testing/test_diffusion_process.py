"""The diffusion toolkit against MONAI's schedulers and closed forms."""

import math

import pytest
import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from NeuroADLib.diffusion.process import (
    PREDICTION_TYPES,
    DiffusionConfig,
    DiffusionProcess,
    respaced_levels,
)


def test_cosine_schedule_follows_its_closed_form():
    """abar_t = f(t + 1) / f(0), f(t) = cos^2((t / T + s) / (1 + s) pi / 2), s = 0.008
    (Nichol & Dhariwal eq. 17), up to MONAI's beta clip at 0.999 on the last level."""
    process = DiffusionProcess(DiffusionConfig(num_timesteps=10, schedule="cosine"))

    def f(t):
        return math.cos((t / 10 + 0.008) / 1.008 * math.pi / 2) ** 2

    expected = torch.tensor([f(t + 1) / f(0) for t in range(9)], dtype=torch.float64)
    assert torch.allclose(process.alphas_cumprod[:9], expected, rtol=1e-4)


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear"])
def test_linear_schedules_match_their_betas(schedule):
    config = DiffusionConfig(num_timesteps=50, schedule=schedule, beta_start=1e-3,
                             beta_end=2e-2)
    process = DiffusionProcess(config)
    betas = (torch.linspace(1e-3, 2e-2, 50, dtype=torch.float64) if schedule == "linear"
             else torch.linspace(1e-3**0.5, 2e-2**0.5, 50, dtype=torch.float64) ** 2)
    assert torch.allclose(process.alphas_cumprod, torch.cumprod(1 - betas, 0), rtol=1e-5)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_every_prediction_type_recovers_x0_and_eps_from_its_target(prediction_type):
    process = DiffusionProcess(DiffusionConfig(num_timesteps=100, schedule="cosine",
                                               prediction_type=prediction_type))
    z0, noise = torch.randn(3, 2, 5, 5, dtype=torch.float64), torch.randn(3, 2, 5, 5,
                                                                         dtype=torch.float64)
    t = torch.tensor([0, 40, 99])
    zt = process.q_sample(z0, t, noise)
    x0, eps = process.x0_and_eps(process.target(z0, noise, t), zt, t)
    assert torch.allclose(x0, z0, atol=1e-6) and torch.allclose(eps, noise, atol=1e-6)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_step_matches_monai(prediction_type, eta):
    process = DiffusionProcess(DiffusionConfig(num_timesteps=10, schedule="cosine",
                                               prediction_type=prediction_type))
    scheduler = DDIMScheduler(10, schedule="cosine", prediction_type=prediction_type,
                              clip_sample=False)
    scheduler.set_timesteps(5)
    levels = respaced_levels(10, 5)
    assert levels == [8, 6, 4, 2, 0]  # MONAI's step goes from t to t - T // steps as well
    generator = torch.Generator().manual_seed(0)
    sample, output = (torch.randn(2, 4, 6, 6, generator=generator) for _ in range(2))
    for index, t in enumerate(levels):
        t_prev = levels[index + 1] if index + 1 < len(levels) else -1
        expected, _ = scheduler.step(output, t, sample, eta,
                                     torch.Generator().manual_seed(index))
        noise = torch.randn(sample.shape, generator=torch.Generator().manual_seed(index))
        x0, eps = process.x0_and_eps(output, sample, torch.tensor([t]))
        assert torch.allclose(process.ddim_step(x0, eps, t, t_prev, eta, noise), expected,
                              atol=1e-5)


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_ddpm_step_matches_monai(variance_type):
    process = DiffusionProcess(DiffusionConfig(num_timesteps=50, schedule="linear",
                                               beta_start=1e-3, beta_end=5e-2))
    scheduler = DDPMScheduler(50, schedule="linear_beta", beta_start=1e-3, beta_end=5e-2,
                              variance_type=variance_type, clip_sample=False)
    generator = torch.Generator().manual_seed(0)
    sample, output = (torch.randn(2, 3, 5, 5, generator=generator) for _ in range(2))
    for t in (49, 20, 1, 0):
        expected, _ = scheduler.step(output, t, sample, torch.Generator().manual_seed(t))
        noise = torch.randn(sample.shape, generator=torch.Generator().manual_seed(t))
        x0, _ = process.x0_and_eps(output, sample, torch.tensor([t]))
        got = process.ddpm_step(x0, sample, t, t - 1, noise, variance_type)
        # float32 through two orderings of the same formula: up to 5e-5 apart (measured over
        # 200 seeds), far below any formula error
        assert torch.allclose(got, expected, atol=1e-4)


def test_learned_range_step_matches_the_learned_variance_diffusion():
    """The learned-range ancestral step agrees with GaussianDiffusion.p_sample (CADD's)."""
    from NeuroADLib.diffusion import GaussianDiffusion

    gaussian = GaussianDiffusion()
    process = DiffusionProcess(DiffusionConfig(num_timesteps=1000, beta_start=0.0015,
                                               beta_end=0.0195))
    zt, eps, v, noise = (torch.randn(1, 2, 4, 4, dtype=torch.float64) for _ in range(4))
    v = v.clamp(-1, 1)
    t = 300
    expected = gaussian.p_sample(torch.cat([eps, v], 1), zt, torch.tensor([t]), noise)
    x0, _ = process.x0_and_eps(eps, zt, torch.tensor([t]))
    got = process.ddpm_step(x0, zt, t, t - 1, noise, "learned_range", v)
    assert torch.allclose(got.float(), expected.float(), atol=1e-4)


def test_masked_forward_process_leaves_unmasked_positions_clean():
    """MAD-AD eq. 2: only positions where the mask is 1 are diffused."""
    process = DiffusionProcess(DiffusionConfig(num_timesteps=10, schedule="cosine"))
    z0, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    mask = (torch.rand(2, 1, 8, 8) > 0.5).float()
    t = torch.tensor([3, 9])
    zt = process.q_sample(z0, t, noise, mask)
    full = process.q_sample(z0, t, noise)
    assert torch.equal(zt[(mask == 0).expand_as(zt)], z0[(mask == 0).expand_as(z0)])
    assert torch.equal(zt[(mask == 1).expand_as(zt)], full[(mask == 1).expand_as(full)])


def test_known_region_blend_keeps_the_noised_known_region():
    process = DiffusionProcess(DiffusionConfig(num_timesteps=100))
    known, sample, noise = (torch.randn(1, 1, 4, 4) for _ in range(3))
    keep = torch.zeros(1, 1, 4, 4)
    keep[..., :2] = 1
    blended = process.blend_known(sample, known, 50, keep, noise)
    abar = process.alphas_cumprod[50].float()
    assert torch.allclose(blended[..., :2], (abar.sqrt() * known + (1 - abar).sqrt() * noise
                                             )[..., :2])
    assert torch.equal(blended[..., 2:], sample[..., 2:])


def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match="schedule"):
        DiffusionProcess(DiffusionConfig(schedule="quadratic"))
    with pytest.raises(ValueError, match="prediction type"):
        DiffusionProcess(DiffusionConfig(prediction_type="score"))
    with pytest.raises(ValueError, match="steps"):
        respaced_levels(10, 11)
    process = DiffusionProcess(DiffusionConfig())
    with pytest.raises(ValueError, match="variance type"):
        process.ddpm_step(torch.zeros(1), torch.zeros(1), 5, 4, torch.zeros(1), "learned")

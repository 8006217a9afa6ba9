"""Diffusion maths against closed forms and torch.distributions."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from NeuroADLib.diffusion import GaussianDiffusion, hybrid_loss, normal_kl  # noqa: E402


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion()


def test_schedule_is_cadds_linear_one(diffusion):
    assert diffusion.betas[0].item() == pytest.approx(0.0015)
    assert diffusion.betas[-1].item() == pytest.approx(0.0195)
    expected = torch.cumprod(1 - torch.linspace(0.0015, 0.0195, 1000, dtype=torch.float64), 0)
    torch.testing.assert_close(diffusion.alphas_cumprod, expected)


def test_normal_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(50, generator=g), torch.randn(50, generator=g)
    lv1, lv2 = torch.randn(50, generator=g), torch.randn(50, generator=g)
    reference = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, torch.exp(0.5 * lv1)),
        torch.distributions.Normal(m2, torch.exp(0.5 * lv2)))
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), reference, atol=1e-6, rtol=1e-5)


def test_posterior_is_the_gaussian_product(diffusion):
    """q(z_{t-1}|z_t,z_0) by Bayes from q(z_{t-1}|z_0) and q(z_t|z_{t-1}), numerically."""
    t = torch.tensor([10, 500, 999])
    z0, zt = torch.randn(3, 1), torch.randn(3, 1)
    mean, log_variance = diffusion.q_posterior(z0, zt, t)
    for k, step in enumerate(t.tolist()):
        abar_prev = diffusion.alphas_cumprod_prev[step]
        beta = diffusion.betas[step]
        # prior N(sqrt(abar_prev) z0, 1 - abar_prev); likelihood of z_t: N(sqrt(1-beta) x, beta)
        precision = 1 / (1 - abar_prev) + (1 - beta) / beta
        expected_mean = (abar_prev.sqrt() * z0[k] / (1 - abar_prev)
                         + (1 - beta).sqrt() * zt[k] / beta) / precision
        assert mean[k].item() == pytest.approx(expected_mean.item(), rel=1e-5, abs=1e-6)
        assert log_variance[k].exp().item() == pytest.approx((1 / precision).item(), rel=1e-5)


def test_true_noise_gives_the_true_posterior_and_zero_kl(diffusion):
    t = torch.tensor([40, 250])
    z0, noise = torch.randn(2, 3, 4, 4, 4), torch.randn(2, 3, 4, 4, 4)
    zt = diffusion.q_sample(z0, t, noise)
    v = torch.full_like(z0, -1.0)  # fraction 0: the posterior variance beta~
    output = torch.cat([noise, v], dim=1)
    kl = diffusion.voxel_kl(output, z0, zt, t)
    assert kl.abs().max().item() < 1e-4
    wrong = torch.cat([noise + 0.5, v], dim=1)
    assert diffusion.voxel_kl(wrong, z0, zt, t).min().item() > 0


def test_q_sample_moments(diffusion):
    t = torch.full((20000,), 300)
    z0 = torch.full((20000, 1), 2.0)
    noise = torch.randn(20000, 1, generator=torch.Generator().manual_seed(1))
    zt = diffusion.q_sample(z0, t, noise)
    abar = diffusion.alphas_cumprod[300].item()
    assert zt.mean().item() == pytest.approx(2.0 * abar**0.5, abs=0.02)
    assert zt.var().item() == pytest.approx(1 - abar, rel=0.03)


def test_hybrid_loss_trains_the_variance_only_through_the_vlb(diffusion):
    t = torch.tensor([100])
    z0, noise = torch.randn(1, 2, 3, 3, 3), torch.randn(1, 2, 3, 3, 3)
    zt = diffusion.q_sample(z0, t, noise)
    output = torch.cat([noise.clone(), torch.zeros_like(z0)], dim=1).requires_grad_(True)
    hybrid_loss(diffusion, output, z0, zt, t, noise).backward()
    eps_grad, v_grad = output.grad.chunk(2, dim=1)
    assert eps_grad.abs().max().item() < 1e-7  # perfect eps: no MSE gradient, VLB stopped
    assert v_grad.abs().max().item() > 0


def test_a_respaced_step_of_one_level_is_the_ancestral_step(diffusion):
    g = torch.Generator().manual_seed(2)
    zt, eps, noise = (torch.randn(2, 3, 4, 4, generator=g) for _ in range(3))
    v = torch.rand(2, 3, 4, 4, generator=g) * 2 - 1
    output = torch.cat([eps, v], dim=1)
    for t in (1, 300, 999):
        expected = diffusion.p_sample(output, zt, torch.tensor([t, t]), noise)
        got = diffusion.p_sample_respaced(output, zt, t, t - 1, noise)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    # the last step lands on the clean estimate, without noise
    z0 = diffusion.predict_z0(zt, torch.tensor([40, 40]), eps)
    torch.testing.assert_close(diffusion.p_sample_respaced(output, zt, 40, -1, noise), z0,
                               atol=1e-5, rtol=1e-5)


def test_a_respaced_step_samples_the_true_posterior_between_its_levels(diffusion):
    """With the true noise and v = -1 (beta~), a jump t -> s samples q(z_s | z_t, z_0): the
    Gaussian conditional of the forward marginals z_s = a_s z_0 + sigma_s e1 and
    z_t = r z_s + sqrt(1 - r^2) e2, r^2 = abar_t / abar_s."""
    t, s = 499, 249
    g = torch.Generator().manual_seed(4)
    z0, noise = torch.randn(1, 1, 6, 6, generator=g), torch.randn(1, 1, 6, 6, generator=g)
    zt = diffusion.q_sample(z0, torch.tensor([t]), noise)
    output = torch.cat([noise, -torch.ones_like(noise)], dim=1)
    mean = diffusion.p_sample_respaced(output, zt, t, s, torch.zeros_like(z0))
    spread = diffusion.p_sample_respaced(output, zt, t, s, torch.ones_like(z0)) - mean
    abar_t, abar_s = diffusion.alphas_cumprod[t], diffusion.alphas_cumprod[s]
    r2 = abar_t / abar_s
    covariance = r2.sqrt() * (1 - abar_s)  # Cov(z_s, z_t | z_0)
    expected_mean = abar_s.sqrt() * z0 + covariance / (1 - abar_t) * (zt - abar_t.sqrt() * z0)
    expected_variance = (1 - abar_s) - covariance**2 / (1 - abar_t)
    torch.testing.assert_close(mean, expected_mean.float(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(spread**2, torch.full_like(spread, expected_variance.item()),
                               atol=1e-5, rtol=1e-4)

"""CADD's Algorithm 1 with denoisers whose answers are known in closed form."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from NeuroADLib.diffusion import GaussianDiffusion  # noqa: E402
from NeuroADLib.diffusion.inpainting import (  # noqa: E402
    InpaintingSettings,
    blended_latent,
    denoise_chains,
    inpainting_masks,
    kl_guided_inpainting,
    noised_latents,
    reconstruct,
)
from NeuroADLib.networks.latte import LATTE_CONFIGS, LatteTransformer  # noqa: E402

DIFFUSION = GaussianDiffusion()


def oracle(z0: torch.Tensor, wrong: torch.Tensor | None = None):
    """A denoiser that knows z0: it returns the exact noise (and the posterior variance),
    plus an error inside the boolean region `wrong`."""
    def model(z, t):
        abar = DIFFUSION.alphas_cumprod[t].float().reshape(-1, 1, 1, 1, 1)
        eps = (z - abar.sqrt() * z0) / (1 - abar).sqrt()
        if wrong is not None:
            eps = eps + 2.0 * wrong
        return torch.cat([eps, -torch.ones_like(eps)], dim=1)
    return model


def test_levels_follow_the_paper():
    assert InpaintingSettings().levels == [50, 100, 150, 200, 250]
    assert InpaintingSettings(t_int=1000).levels[-1] == 1000
    with pytest.raises(ValueError, match="divide"):
        InpaintingSettings(respacing=3)


def test_masks_are_subject_and_cohort_percentile_and():
    kl = torch.arange(2 * 4 * 5 * 5, dtype=torch.float32).reshape(2, 4, 5, 5)
    cohort = torch.full((2, 4, 5, 5), 150.0)
    masks = inpainting_masks(kl, cohort, 95.0)
    subject = torch.quantile(kl.flatten(1), 0.95, dim=1)
    expected = (kl > subject[:, None, None, None]) & (kl > 150.0)
    assert torch.equal(masks, expected)
    assert masks[0].sum() == 0 and masks[1].sum() == 5  # level 0 never beats the cohort


@pytest.mark.parametrize("respacing", [1, 10])
def test_a_perfect_denoiser_returns_the_input(respacing):
    z0 = torch.randn(1, 3, 4, 5, 4, generator=torch.Generator().manual_seed(3))
    settings = InpaintingSettings(t_int=100, respacing=respacing)
    result = kl_guided_inpainting(DIFFUSION, oracle(z0), z0, settings, None)
    assert result["kl"].abs().max() < 1e-3
    torch.testing.assert_close(result["latent"], z0, atol=1e-4, rtol=1e-4)


def test_only_the_anomalous_region_is_inpainted():
    z0 = torch.randn(1, 3, 6, 6, 6, generator=torch.Generator().manual_seed(4))
    wrong = torch.zeros(1, 3, 6, 6, 6)
    wrong[..., :2, :2, :2] = 1.0  # the denoiser disagrees with z0 in one corner
    settings = InpaintingSettings(t_int=100, respacing=10)
    # A healthy cohort on which this denoiser is exact would give near-zero percentiles.
    cohort = torch.full((len(settings.levels), 6, 6, 6), 1e-2)
    result = kl_guided_inpainting(DIFFUSION, oracle(z0, wrong), z0, settings, cohort)
    masks = result["masks"]
    assert masks.any() and not masks[:, 2:, :, :].any()  # masks stay in the corner
    outside = torch.ones(6, 6, 6, dtype=torch.bool)
    outside[:2, :2, :2] = False
    assert torch.equal(result["latent"][0][:, outside], z0[0][:, outside])  # healthy kept
    assert not torch.equal(result["latent"], z0)


def test_the_blend_is_the_mean_over_levels_of_masked_chain_ends():
    # Algorithm 1, lines 120-122, by hand: a position masked at one level of two moves half
    # way to that chain's end; one masked at both is their mean; one masked at none is z0.
    z0 = torch.zeros(1, 1, 1, 1, 3)
    ends = torch.tensor([2.0, 4.0]).reshape(2, 1, 1, 1, 1).expand(2, 1, 1, 1, 3)
    masks = torch.tensor([[True, True, False], [False, True, False]]).reshape(2, 1, 1, 3)
    blended = blended_latent(z0, ends, masks)
    assert blended.shape == (1, 1, 1, 1, 3)
    assert torch.allclose(blended.flatten(), torch.tensor([1.0, 3.0, 0.0]))


def test_batched_chains_equal_separate_chains():
    torch.manual_seed(0)
    network = LatteTransformer(LATTE_CONFIGS["tiny"])
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.05)

    def model(z, t):
        with torch.no_grad():
            return network(z, t, torch.full((len(t),), 50.0), torch.ones(len(t)))

    z0 = torch.randn(1, 3, 4, 4, 4, generator=torch.Generator().manual_seed(5))
    zu, _ = noised_latents(DIFFUSION, z0, [50, 100], seed=7)
    together = denoise_chains(DIFFUSION, model, zu, [50, 100], respacing=10, seed=7)
    first = denoise_chains(DIFFUSION, model, zu[:1], [50], respacing=10, seed=7)
    second = denoise_chains(DIFFUSION, model, zu[1:], [100], respacing=10, seed=7)
    torch.testing.assert_close(together, torch.cat([first, second]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("ancestral", [True, False])
def test_respaced_chains_of_a_perfect_denoiser_return_the_input(ancestral):
    z0 = torch.randn(1, 3, 4, 5, 4, generator=torch.Generator().manual_seed(6))
    result = reconstruct(DIFFUSION, oracle(z0), z0, [200], respacing=10, seed=3,
                         ancestral=ancestral)
    torch.testing.assert_close(result, z0, atol=1e-4, rtol=1e-4)


def test_respaced_ancestral_chains_draw_seeded_noise_and_ddim_none():
    z0 = torch.randn(1, 3, 4, 5, 4, generator=torch.Generator().manual_seed(6))

    def shrinking(z, t):  # a denoiser that knows nothing of z0: the path taken matters
        return torch.cat([0.5 * z, torch.zeros_like(z)], dim=1)

    def chain(ancestral, seed):
        return reconstruct(DIFFUSION, shrinking, z0, [200], respacing=10, seed=seed,
                           ancestral=ancestral)

    torch.testing.assert_close(chain(True, 3), chain(True, 3))
    assert not torch.allclose(chain(True, 3), chain(False, 3))
    # DDIM draws only the forward noise: the chain's own seed (seed + 1) does not enter it
    zu, _ = noised_latents(DIFFUSION, z0, [200], seed=3)
    ddim = denoise_chains(DIFFUSION, shrinking, zu, [200], 10, seed=99, ancestral=False)
    torch.testing.assert_close(ddim, chain(False, 3))
    assert not torch.allclose(
        denoise_chains(DIFFUSION, shrinking, zu, [200], 10, seed=99, ancestral=True),
        chain(True, 3))


def test_registry_options_are_the_inpainting_defaults():
    from dataclasses import asdict

    from NeuroADLib.methods.cadd import VARIANTS, CADDSettings
    from NeuroADLib.methods.registry import CADD_OPTIONS, METHODS

    assert CADD_OPTIONS == asdict(CADDSettings())

    assert set(VARIANTS) == {n for n, m in METHODS.items() if m.family == "cadd"}


@pytest.mark.parametrize("respacing", [1, 10])
def test_every_reverse_step_is_reported_and_can_stop_the_sampling(respacing):
    z0 = torch.randn(1, 3, 4, 5, 4, generator=torch.Generator().manual_seed(5))
    settings = InpaintingSettings(t_int=100, respacing=respacing)
    seen = []
    kl_guided_inpainting(DIFFUSION, oracle(z0), z0, settings, None,
                         on_step=lambda done, total: seen.append((done, total)))
    steps = 100 // respacing
    assert seen == [(k, steps) for k in range(1, steps + 1)]

    class Stop(Exception):
        pass

    def stop_at_third(done, total):
        if done == 3:
            raise Stop

    with pytest.raises(Stop):
        kl_guided_inpainting(DIFFUSION, oracle(z0), z0, settings, None, on_step=stop_at_third)

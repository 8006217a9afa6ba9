"""cDDPM: FiLM conditioning (section 3.2), the one-step ensemble reconstruction and its
residual (sections 3.1, 4.3), the L1 x0 loss, and a tiny bundle trained, resumed, calibrated
and run end to end."""

import json
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch
from conftest import ellipsoid_brain, healthy_volume, tiny_cddpm_bundle, tiny_cddpm_training

from NeuroADLib.diffusion.noise import SimplexNoise
from NeuroADLib.diffusion.process import DiffusionProcess
from NeuroADLib.methods.cddpm import CDDPMSettings, cddpm_diffusion, load_cddpm
from NeuroADLib.methods.registry import CDDPM_OPTIONS, validate_options
from NeuroADLib.models.weights import load_weights
from NeuroADLib.networks.conditioned_unet import (
    CONDITIONED_UNET_CONFIGS,
    EncoderConditionedNetwork,
    FiLMResBlock,
)
from NeuroADLib.training.cddpm import cddpm_loss, train_cddpm

TINY = tiny_cddpm_training()


def _quiet(message):
    return None


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    torch.set_num_threads(1)
    return tiny_cddpm_bundle(tmp_path_factory.mktemp("cddpm"))


def test_film_scales_and_shifts_the_normalised_features():
    torch.manual_seed(0)
    block = FiLMResBlock(4, 4, condition_dim=6, groups=2)
    gamma, beta = torch.linspace(-0.5, 0.5, 4), torch.linspace(1.0, 2.0, 4)
    with torch.no_grad():  # MLP II outputs the constants [gamma, beta] whatever c' is
        block.film[1].weight.zero_()
        block.film[1].bias.copy_(torch.cat([gamma, beta]))
    x, condition = torch.randn(2, 4, 8, 8), torch.randn(2, 6)
    h = block.norm2(block.conv1(torch.nn.functional.silu(block.norm1(x))))
    h = h * (gamma + 1)[None, :, None, None] + beta[None, :, None, None]  # f (gamma + 1) + beta
    expected = x + block.conv2(torch.nn.functional.silu(h))
    assert torch.allclose(block(x, condition), expected, atol=1e-6)


def test_the_context_of_the_clean_image_changes_the_estimate():
    torch.manual_seed(0)
    network = EncoderConditionedNetwork(CONDITIONED_UNET_CONFIGS["tiny"]).eval()
    xt, t = torch.randn(2, 1, 16, 16), torch.tensor([10, 500])
    with torch.no_grad():
        a = network(xt, t, torch.zeros(2, 1, 16, 16))
        b = network(xt, t, torch.ones(2, 1, 16, 16))
        c = network(xt, torch.tensor([11, 500]), torch.zeros(2, 1, 16, 16))
    assert a.shape == xt.shape
    assert not torch.allclose(a, b)
    assert not torch.allclose(a[0], c[0]) and torch.allclose(a[1], c[1])


def test_noise_levels_are_the_papers_ensemble():
    assert CDDPMSettings().noise_levels() == [250, 500, 750]
    assert CDDPMSettings(levels=1).noise_levels() == [500]  # the paper's single t_test = T/2
    assert CDDPMSettings(t_min=100, t_max=400, levels=4).noise_levels() == [100, 200, 300, 400]


def test_registry_defaults_are_the_settings_defaults():
    assert CDDPM_OPTIONS == asdict(CDDPMSettings())


def test_t_min_above_t_max_is_refused():
    with pytest.raises(ValueError, match="t_min must be at most t_max"):
        validate_options("cddpm", {"t_min": 800})
    assert validate_options("cddpm", {"t_min": "100", "levels": 2}) == {"t_min": 100,
                                                                       "levels": 2}


def test_loss_is_l1_of_the_x0_prediction_on_the_forward_process():
    torch.manual_seed(0)
    network = EncoderConditionedNetwork(CONDITIONED_UNET_CONFIGS["tiny"])
    process = DiffusionProcess(cddpm_diffusion())
    x0, t = torch.rand(3, 1, 16, 16), torch.tensor([0, 400, 999])
    noise = SimplexNoise().sample((3, 1, 16, 16), t, torch.Generator().manual_seed(1))
    abar = process.alphas_cumprod[t].float()[:, None, None, None]
    x = 2 * x0 - 1
    xt = abar.sqrt() * x + (1 - abar).sqrt() * noise  # eq. 1
    expected = (network(xt, t, x) - x).abs().mean()
    assert torch.allclose(cddpm_loss(network, process, x0, t, noise), expected, atol=1e-6)


def test_reconstruction_is_the_mean_of_one_step_estimates_over_the_levels(tiny_bundle):
    _, bundle = tiny_bundle
    model = load_cddpm(bundle, options={"levels": 3})
    x0 = torch.rand(2, 1, 32, 32)
    noises = model.level_noises(2, (32, 32))
    estimates = []
    with torch.no_grad():
        for k, level in enumerate([250, 500, 750]):
            t = torch.full((2,), level)
            xt = model.diffusion.q_sample(2 * x0 - 1, t, noises[:, k])
            estimates.append((model.network(xt, t, 2 * x0 - 1) + 1) / 2)
    assert torch.allclose(model.reconstruct(x0, noises), torch.stack(estimates).mean(0),
                          atol=1e-5)


def test_draws_average_one_step_estimates_over_levels_and_noise_draws(tiny_bundle):
    _, bundle = tiny_bundle
    model = load_cddpm(bundle, options={"levels": 2, "draws": 3})
    assert model.settings.ensemble() == [250, 750] * 3
    x0 = torch.rand(2, 1, 32, 32)
    noises = model.level_noises(2, (32, 32))
    assert noises.shape == (2, 6, 1, 32, 32)
    assert not torch.equal(noises[:, 0], noises[:, 2])  # each draw its own noise
    estimates = []
    with torch.no_grad():
        for k, level in enumerate(model.settings.ensemble()):
            t = torch.full((2,), level)
            xt = model.diffusion.q_sample(2 * x0 - 1, t, noises[:, k])
            estimates.append((model.network(xt, t, 2 * x0 - 1) + 1) / 2)
    assert torch.allclose(model.reconstruct(x0, noises), torch.stack(estimates).mean(0),
                          atol=1e-5)


def test_map_is_the_filtered_residual_inside_the_eroded_brain(tiny_bundle):
    _, bundle = tiny_bundle
    shape = (32, 32, 32)
    brain = ellipsoid_brain(shape)
    image = healthy_volume(shape, seed=3) * brain
    raw = load_cddpm(bundle, options={"median_size": 1, "erosion": 0})
    anomaly, healthy = raw.predict(image, brain)
    assert np.allclose(anomaly, np.abs(image - healthy) * brain, atol=1e-5)
    filtered, _ = load_cddpm(bundle, options={"median_size": 3, "erosion": 2}).predict(
        image, brain)
    from NeuroADLib.postprocessing import erode_brain_mask, median_filter

    expected = median_filter(anomaly, 3) * erode_brain_mask(brain > 0, 2)
    assert np.allclose(filtered, expected, atol=1e-6)
    from scipy.ndimage import gaussian_filter

    smoothed, _ = load_cddpm(bundle, options={"median_size": 3, "gaussian_sigma": 1.5,
                                              "erosion": 1}).predict(image, brain)
    expected = gaussian_filter(median_filter(anomaly, 3), 1.5) * erode_brain_mask(brain > 0, 1)
    assert np.allclose(smoothed, expected, atol=1e-6)
    assert not np.allclose(smoothed, median_filter(anomaly, 3) * erode_brain_mask(brain > 0, 1))
    with pytest.raises(ValueError, match="gaussian_sigma"):
        validate_options("cddpm", {"gaussian_sigma": 6.0})


def test_slice_batching_does_not_change_the_map(tiny_bundle):
    _, bundle = tiny_bundle
    shape = (32, 32, 32)
    brain = ellipsoid_brain(shape)
    image = healthy_volume(shape, seed=4) * brain
    model = load_cddpm(bundle)
    anomaly = model.predict(image, brain)[0]
    model.batch_size = 3
    assert np.allclose(model.predict(image, brain)[0], anomaly, atol=1e-5)
    assert not np.array_equal(load_cddpm(bundle, options={"seed": 7}).predict(image, brain)[0],
                              anomaly)


def test_a_slices_noise_does_not_depend_on_how_many_slices_there_are(tiny_bundle):
    _, bundle = tiny_bundle
    few = load_cddpm(bundle).level_noises(3, (16, 16))
    model = load_cddpm(bundle)
    many = model.level_noises(5, (16, 16))
    assert few.shape == (3, 2, 1, 16, 16) and torch.equal(many[:3], few)
    assert torch.equal(model.level_noises(2, (16, 16)), few[:2])  # from the kept draws


def test_slices_the_unet_cannot_halve_are_refused(tiny_bundle):
    _, bundle = tiny_bundle
    brain = np.ones((8, 31, 32), bool)  # the tiny UNet halves once: sides must be even
    with pytest.raises(ValueError, match="multiples of 2"):
        load_cddpm(bundle).predict(np.zeros(brain.shape, np.float32), brain)


def test_bundle_records_what_it_loads_from(tiny_bundle):
    _, bundle = tiny_bundle
    manifest = json.loads((bundle / "manifest.json").read_text())
    network = json.loads((bundle / "network" / "manifest.json").read_text())
    assert network["diffusion"] == cddpm_diffusion().to_dict()
    assert network["config"] == CONDITIONED_UNET_CONFIGS["tiny"].to_dict()
    assert network["noise"] == "simplex"
    assert network["training"]["ema_decay"] == TINY.ema_decay == 0.0  # the last weights
    assert manifest["inference"] == asdict(TINY.inference)
    assert manifest["training_data"]["validation"]
    assert (bundle / "calibration_cddpm.json").is_file()
    weights = load_weights(bundle / "network", "cddpm")
    assert all(w.dtype == torch.float16 for w in weights.values() if w.is_floating_point())


def test_resumed_training_equals_uninterrupted(tiny_bundle, tmp_path):
    cohort, whole = tiny_bundle
    longer = replace(TINY, steps=4)
    train_cddpm(cohort, tmp_path / "parts", TINY, log=_quiet)
    parts = train_cddpm(cohort, tmp_path / "parts", longer, log=_quiet)
    direct = train_cddpm(cohort, tmp_path / "direct", longer, log=_quiet)
    a, b = (load_weights(folder / "network", "cddpm") for folder in (parts, direct))
    assert all(torch.equal(a[k], b[k]) for k in a)
    shorter = load_weights(whole / "network", "cddpm")
    assert not all(torch.equal(shorter[k], b[k]) for k in b)


def test_training_on_a_noise_bank_resumes_exactly_and_differs_from_fresh_noise(tiny_bundle,
                                                                                tmp_path):
    cohort, whole = tiny_bundle
    banked = replace(TINY, noise_bank=8)
    train_cddpm(cohort, tmp_path / "parts", banked, log=_quiet)
    parts = train_cddpm(cohort, tmp_path / "parts", replace(banked, steps=4), log=_quiet)
    direct = train_cddpm(cohort, tmp_path / "direct", replace(banked, steps=4), log=_quiet)
    a, b = (load_weights(folder / "network", "cddpm") for folder in (parts, direct))
    assert all(torch.equal(a[k], b[k]) for k in a)
    fresh = load_weights(whole / "network", "cddpm")
    banked_two = load_weights(train_cddpm(cohort, tmp_path / "two", banked, log=_quiet)
                              / "network", "cddpm")
    assert not all(torch.equal(fresh[k], banked_two[k]) for k in fresh)
    manifest = json.loads((direct / "network" / "manifest.json").read_text())
    assert manifest["training"]["noise_bank"] == 8
    with pytest.raises(ValueError, match="simplex"):
        train_cddpm(cohort, tmp_path / "gauss", replace(banked, noise="gaussian"), log=_quiet)

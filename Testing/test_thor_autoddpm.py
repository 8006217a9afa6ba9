"""THOR and AutoDDPM on the shared slice DDPM: the chain against MONAI's DDPM scheduler and
closed forms, the harmonisation and re-sampling rules of the papers, their cost in network
evaluations, the calibrated mask threshold, and the trainer."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch
from conftest import ellipsoid_brain, healthy_volume, tiny_ddpm_bundle, tiny_ddpm_training

from NeuroADLib.diffusion.process import DiffusionProcess
from NeuroADLib.methods.autoddpm import (
    AutoDDPMSettings,
    load_autoddpm,
    mask_threshold_from_healthy,
    normalised_residual,
)
from NeuroADLib.methods.image_ddpm import (
    SliceNoise,
    chain_levels,
    image_ddpm_diffusion,
    steps_of,
)
from NeuroADLib.methods.registry import AUTODDPM_OPTIONS, THOR_OPTIONS, validate_options
from NeuroADLib.methods.thor import THORSettings, blend_weight, harmonic_mean, load_thor
from NeuroADLib.models.weights import load_weights
from NeuroADLib.training.data import load_split
from NeuroADLib.training.image_ddpm import epsilon_loss, train_image_ddpm

TINY = tiny_ddpm_training()


def _quiet(message):
    return None


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    torch.set_num_threads(1)
    return tiny_ddpm_bundle(tmp_path_factory.mktemp("ddpm"))


def _scan():
    brain = ellipsoid_brain((32, 32, 32))
    return (healthy_volume((32, 32, 32), 3) * brain).astype(np.float32), brain


def test_chains_visit_every_stride_th_level_down_to_the_clean_image():
    assert chain_levels(350, 50) == [350, 300, 250, 200, 150, 100, 50, 0]
    assert len(chain_levels(350, 1)) == 351
    assert steps_of([100, 50, 0]) == [(100, 50), (50, 0), (0, -1)]


def test_registry_defaults_are_the_settings_defaults():
    assert asdict(THORSettings()) == THOR_OPTIONS
    autoddpm = asdict(AutoDDPMSettings())
    for calibrated in ("mask_fpr", "mask_threshold"):  # set when the bundle is built
        autoddpm.pop(calibrated)
    assert autoddpm == AUTODDPM_OPTIONS


def test_a_stride_that_skips_thors_harmonisation_levels_is_refused():
    with pytest.raises(ValueError, match="skips the harmonisation levels"):
        THORSettings(stride=30)
    with pytest.raises(ValueError, match="skips the harmonisation levels"):
        validate_options("thor", {"stride": 30})
    assert validate_options("thor", {"stride": 25}) == {"stride": 25}
    with pytest.raises(ValueError, match="t_inpaint"):
        validate_options("autoddpm", {"t_inpaint": 300})


def test_a_full_ancestral_step_is_monai_ddpm_schedulers_step(tiny_bundle):
    """stride 1, eta 1: the papers' DDPM step (posterior mean from the clipped x0, variance
    beta~), as MONAI's DDPMScheduler takes it with the same noise."""
    from monai.networks.schedulers import DDPMScheduler

    model = load_thor(tiny_bundle[1])
    ddpm = model.ddpm
    zt = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    t = 120
    x0, eps = ddpm.estimate(zt, t)
    ours = ddpm.step(x0, eps, t, t - 1, 1.0, SliceNoise(7), np.array([0]))

    scheduler = DDPMScheduler(num_train_timesteps=1000, schedule="linear_beta",
                              beta_start=1e-4, beta_end=2e-2, clip_sample=True)
    with torch.no_grad():
        output = ddpm.network(zt, torch.tensor([t]))
    theirs, _ = scheduler.step(output, t, zt, generator=torch.Generator().manual_seed(7 * 100_003))
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_renoising_one_level_to_another_is_the_forward_process():
    """q(z_t | z_s) composed with q(z_s | x0) has the closed form of q(z_t | x0)."""
    process = DiffusionProcess(image_ddpm_diffusion())
    generator = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000,), 0.6)
    zs = process.q_sample(x0, torch.tensor([40]), torch.randn(x0.shape, generator=generator))
    zt = process.renoise(zs, 40, 90, torch.randn(x0.shape, generator=generator))
    abar = float(process.alphas_cumprod[90])
    assert zt.mean().item() == pytest.approx(np.sqrt(abar) * 0.6, abs=5e-3)
    assert zt.std().item() == pytest.approx(np.sqrt(1 - abar), rel=5e-3)


def test_harmonic_mean_matches_scipy():
    from scipy.stats import hmean

    maps = [np.random.default_rng(k).uniform(0.01, 1, (4, 5)) for k in range(3)]
    np.testing.assert_allclose(harmonic_mean(maps), hmean(np.stack(maps), axis=0), rtol=1e-5)


def test_the_blend_weight_is_one_on_the_anomaly_and_zero_far_from_it():
    residual = np.zeros((1, 40, 40), np.float32)
    residual[0, 18:22, 18:22] = 0.5
    weight = blend_weight(residual, 13)
    assert weight.max() == 1.0 and weight[0, 20, 20] == 1.0
    assert weight[0, 20, 26] == pytest.approx(0.5)  # in the dilated region, not the anomaly
    assert weight[0, 20, 30] == 0.0 and weight[0, 2, 2] == 0.0


def test_the_normalised_residual_divides_by_the_brains_percentile_per_slice():
    rng = np.random.default_rng(1)
    residual = rng.uniform(0, 1, (2, 10, 10)).astype(np.float32)
    masks = np.zeros_like(residual)
    masks[:, 2:8, 2:8] = 1
    a = normalised_residual(residual * masks, masks, 95.0)
    for k in range(2):
        expected = np.clip(residual[k] / np.percentile(residual[k][2:8, 2:8], 95), 0, 1)
        np.testing.assert_allclose(a[k], expected * masks[k], rtol=1e-6)
    assert a[masks == 0].max() == 0


def _counting(model):
    calls = []
    forward = model.ddpm.network.forward

    def counted(*args):
        calls.append(len(args[0]))
        return forward(*args)

    model.ddpm.network.forward = counted
    return calls


@pytest.mark.parametrize("loader", [load_thor, load_autoddpm])
def test_one_slice_batch_costs_the_settings_network_evaluations(tiny_bundle, loader):
    model = loader(tiny_bundle[1])
    model.batch_size = 64  # every brain slice in one batch
    calls = _counting(model)
    model.predict(*_scan())
    assert len(calls) == model.settings.network_evaluations
    assert THORSettings().network_evaluations == 8  # 350, 300, ..., 0
    assert AutoDDPMSettings().network_evaluations == 5 + 4 * 2


@pytest.mark.parametrize("loader", [load_thor, load_autoddpm])
def test_slice_batching_does_not_change_the_map(tiny_bundle, loader):
    image, brain = _scan()
    model = loader(tiny_bundle[1])
    model.batch_size = 64
    whole = model.predict(image, brain)
    model.batch_size = 3
    parts = model.predict(image, brain)
    for a, b in zip(whole, parts, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_resampling_keeps_the_input_outside_the_mask(tiny_bundle):
    model = load_autoddpm(tiny_bundle[1])
    image, brain = _scan()
    slices, masks = image[10:14], brain[10:14].astype(np.float32)
    indices = np.arange(10, 14)
    noise = SliceNoise(0)
    x_rec, weight = model.coarse(slices, masks, indices, noise)
    mask = weight >= 0.5
    restored = model.resample_masked(slices, x_rec, mask, indices, noise)
    np.testing.assert_allclose(restored[~mask], slices[~mask], atol=1e-6)
    assert not np.allclose(restored[mask], slices[mask], atol=1e-3)


def test_the_mask_threshold_lets_at_most_the_chosen_share_of_healthy_pixels_through(
        tiny_bundle):
    cohort, folder = tiny_bundle
    model = load_autoddpm(folder, options={"t_coarse": 100})
    model.settings = replace(model.settings, mask_fpr=0.2, percentile=99.0)
    validation = load_split(cohort, "validation")
    threshold = mask_threshold_from_healthy(model, validation)
    above = []
    for image, brain in zip(validation.images, validation.masks, strict=True):
        z = np.flatnonzero(brain.reshape(len(brain), -1).sum(axis=1))
        _, weight = model.coarse(image[z], brain[z].astype(np.float32), z, SliceNoise(42))
        above.append(weight[brain[z] > 0] > threshold)
    assert np.concatenate(above).mean() <= 0.2


def test_loss_is_the_noise_regression_of_the_forward_process():
    process = DiffusionProcess(image_ddpm_diffusion())
    network = lambda xt, t: torch.zeros_like(xt)  # noqa: E731
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    loss = epsilon_loss(network, process, torch.rand(2, 1, 8, 8), torch.tensor([3, 700]), noise)
    assert loss.item() == pytest.approx((noise ** 2).mean().item())


def test_bundle_records_its_network_settings_and_mask_threshold(tiny_bundle):
    _, folder = tiny_bundle
    manifest = json.loads((folder / "manifest.json").read_text())
    network = json.loads((folder / "network" / "manifest.json").read_text())
    assert manifest["variants"] == ["autoddpm"] and manifest["method"] == "thor"
    assert network["diffusion"]["prediction_type"] == "epsilon"
    assert network["config"]["channels"] == [8, 8]
    inference = manifest["inference"]
    assert inference["thor"]["stride"] == TINY.thor.stride
    assert load_autoddpm(folder).settings.mask_threshold == inference["autoddpm"][
        "mask_threshold"]
    for name in ("thor", "autoddpm"):
        assert (folder / f"calibration_{name}.json").is_file()
        assert "no LPIPS" in manifest["anomaly_maps"][name]


def test_resumed_training_equals_uninterrupted(tiny_bundle, tmp_path):
    cohort, whole = tiny_bundle
    longer = replace(TINY, steps=4)
    train_image_ddpm(cohort, tmp_path / "parts", TINY, log=_quiet)
    parts = train_image_ddpm(cohort, tmp_path / "parts", longer, log=_quiet)
    direct = train_image_ddpm(cohort, tmp_path / "direct", longer, log=_quiet)
    a, b = (load_weights(folder / "network", "ddpm") for folder in (parts, direct))
    assert all(torch.equal(a[k], b[k]) for k in a)
    shorter = load_weights(whole / "network", "ddpm")
    assert not all(torch.equal(shorter[k], b[k]) for k in b)

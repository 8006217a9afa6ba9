"""The pathology-conditioned LDM: eq. 8's shift alignment against a brute-force reference, the
training pairs (deterministic, cached, identity pairs), the 3D AdaGN UNet, the loader building
from what the bundle records, reproducible inference and resumed training."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import numpy as np
import pytest
from conftest import _quiet, healthy_volume, tiny_cadd_stages, tiny_cond_ldm_training

from NeuroADLib.methods.cond_ldm import CondLDMSettings, shift_aligned_residual
from NeuroADLib.methods.registry import COND_LDM_OPTIONS

torch = pytest.importorskip("torch")


def test_the_registry_mirrors_the_settings():
    settings = asdict(CondLDMSettings())
    assert settings.pop("lpips") is False  # the bundle's, not a user option
    assert COND_LDM_OPTIONS == settings


def test_shift_alignment_matches_a_brute_force_minimum():
    rng = np.random.default_rng(0)
    image = rng.random((12, 14, 10)).astype(np.float32)
    healthy = rng.random((12, 14, 10)).astype(np.float32)
    aligned = shift_aligned_residual(image, healthy, 2)
    reference = np.full(image.shape, np.inf, np.float32)
    for index in np.ndindex(image.shape):
        for shift in np.ndindex(5, 5, 5):
            source = tuple(int(np.clip(i + s - 2, 0, n - 1))
                           for i, s, n in zip(index, shift, image.shape, strict=True))
            reference[index] = min(reference[index], abs(image[index] - healthy[source]))
    np.testing.assert_allclose(aligned, reference, atol=1e-7)
    np.testing.assert_array_equal(shift_aligned_residual(image, healthy, 0),
                                  np.abs(image - healthy))


def test_a_shifted_copy_leaves_no_residual_inside():
    image = healthy_volume((16, 16, 16), 3)
    moved = np.roll(image, (1, -2, 2), axis=(0, 1, 2))
    inside = (slice(3, -3),) * 3
    assert shift_aligned_residual(image, moved, 2)[inside].max() == 0
    assert shift_aligned_residual(image, moved, 1)[inside].max() > 0.01


def test_pairs_are_deterministic_per_scan_and_identity_pairs_condition_on_the_target():
    from NeuroADLib.training.pathology_pairs import PairSettings, PathologyPairs, encode_pairs

    class Mean(torch.nn.Module):  # a stand-in first stage: 4x average pooling
        downsampling = 4

        def encode(self, x):
            pooled = torch.nn.functional.avg_pool3d(x, 4)
            return pooled, torch.ones_like(pooled)

    shape = (32, 32, 32)
    images = [healthy_volume(shape, k) for k in range(3)]
    masks = [image > 0 for image in images]
    settings = PairSettings(versions=2, seed=5)
    pairs = encode_pairs(Mean(), images, masks, settings, log=_quiet)
    assert pairs.healthy.shape == (3, 1, 8, 8, 8)
    assert pairs.pathological.shape == (3, 2, 1, 8, 8, 8)
    assert not torch.equal(pairs.pathological[0, 0], pairs.pathological[0, 1])
    alone = encode_pairs(Mean(), images[1:], masks[1:], settings, log=_quiet)
    assert not torch.equal(alone.pathological[0], pairs.pathological[1])  # seeds per index
    again = encode_pairs(Mean(), images, masks, settings, log=_quiet)
    assert torch.equal(again.pathological, pairs.pathological)
    batch = PathologyPairs(pairs.healthy, pairs.pathological)
    targets, conditions = batch.batch(torch.tensor([0, 2]), torch.tensor([1, 0]),
                                      torch.tensor([True, False]))
    assert torch.equal(targets, pairs.healthy[[0, 2]])
    assert torch.equal(conditions[0], pairs.pathological[0, 1])
    assert torch.equal(conditions[1], pairs.healthy[2])


def test_cached_pairs_are_reused_only_for_the_same_key(tmp_path):
    from NeuroADLib.training.pathology_pairs import PathologyPairs, cached_pairs

    made = []

    def compute(value):
        def run():
            made.append(value)
            return PathologyPairs(torch.full((1, 1, 2, 2, 2), value),
                                  torch.full((1, 2, 1, 2, 2, 2), value))
        return run

    path = tmp_path / "pairs.safetensors"
    first = cached_pairs(path, {"a": 1}, compute(1.0))
    again = cached_pairs(path, {"a": 1}, compute(2.0))
    other = cached_pairs(path, {"a": 2}, compute(3.0))
    assert made == [1.0, 3.0]
    assert torch.equal(first.healthy, again.healthy) and other.healthy.max() == 3.0


def test_the_3d_adagn_unet_predicts_eps_and_variance_per_latent_voxel():
    from NeuroADLib.networks.conditioned_unet import EncoderConditionedNetwork
    from NeuroADLib.training.cond_ldm import COND_LDM_CONFIGS

    network = EncoderConditionedNetwork(COND_LDM_CONFIGS["tiny"])
    z = torch.randn(2, 3, 8, 12, 8)
    output = network(z, torch.tensor([3, 700]), z)
    assert output.shape == (2, 6, 8, 12, 8)
    other = network(z, torch.tensor([3, 700]), torch.randn_like(z))
    assert not torch.allclose(output, other)  # the condition reaches the output


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from NeuroADLib.training.cond_ldm import train_cond_ldm

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cond_ldm")
    cohort, autoencoder = tiny_cadd_stages(root)
    bundle = train_cond_ldm(cohort, autoencoder, root / "bundle", tiny_cond_ldm_training(),
                            log=_quiet)
    return root, cohort, autoencoder, bundle


def test_the_bundle_records_its_first_stage_pairs_and_map(tiny):
    from NeuroADLib.models.bundles import Bundle, verify_bundle

    _, _, autoencoder, bundle = tiny
    manifest = json.loads((bundle / "manifest.json").read_text())
    network = json.loads((bundle / "network" / "manifest.json").read_text())
    assert network["config"]["spatial_dims"] == 3 and network["latent_scale"] > 0
    assert network["diffusion"]["beta_start"] == 0.0015
    assert network["training"]["pairs"]["versions"] == 2
    copied = json.loads((bundle / "autoencoder" / "manifest.json").read_text())
    assert copied["config"] == json.loads((autoencoder / "manifest.json").read_text())["config"]
    assert "lpips" in manifest["anomaly_maps"]["cond_ldm"]
    assert manifest["inference"]["lpips"] in (True, False)
    verify_bundle(Bundle(bundle, manifest))


def test_inference_is_reproducible_and_the_options_change_the_map(tiny):
    from NeuroADLib.methods.cond_ldm import load_cond_ldm

    _, _, _, bundle = tiny
    image = healthy_volume((32, 32, 32), 77)
    brain = image > 0
    first = load_cond_ldm(bundle).predict(image, brain)
    second = load_cond_ldm(bundle).predict(image, brain)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    scaled = load_cond_ldm(bundle, options={"minmax": 1}).predict(image, brain)[0]
    assert scaled[brain].max() == pytest.approx(1.0)
    against = load_cond_ldm(bundle, options={"against_reconstruction": 0}).predict(image, brain)
    np.testing.assert_array_equal(against[1], first[1])  # the same pseudo-healthy image
    assert not np.array_equal(against[0], first[0])  # the paper's map, against x
    for options in ({"samples": 2}, {"ancestral": 0}):  # the tiny bundle runs respaced chains
        other = load_cond_ldm(bundle, options=options).predict(image, brain)
        np.testing.assert_array_equal(
            other[1], load_cond_ldm(bundle, options=options).predict(image, brain)[1])
        assert not np.array_equal(other[1], first[1]), options


def test_the_gaussian_post_filter_follows_the_median_and_precedes_the_erosion(tiny):
    from scipy.ndimage import gaussian_filter

    from NeuroADLib.methods.cond_ldm import load_cond_ldm
    from NeuroADLib.methods.registry import validate_options
    from NeuroADLib.postprocessing import erode_brain_mask, median_filter

    _, _, _, bundle = tiny
    image = healthy_volume((32, 32, 32), 78)
    brain = image > 0
    unfiltered = load_cond_ldm(bundle, options={"median_size": 1, "erosion": 0}).predict(
        image, brain)[0]
    smoothed = load_cond_ldm(bundle, options={"median_size": 3, "gaussian_sigma": 1.5,
                                              "erosion": 1}).predict(image, brain)[0]
    expected = gaussian_filter(median_filter(unfiltered, 3), 1.5) * erode_brain_mask(brain, 1)
    np.testing.assert_allclose(smoothed, expected, atol=1e-6)
    assert not np.allclose(smoothed, median_filter(unfiltered, 3) * erode_brain_mask(brain, 1))
    with pytest.raises(ValueError, match="gaussian_sigma"):
        validate_options("cond_ldm", {"gaussian_sigma": 6.0})


def test_the_report_describes_the_map_the_options_make(tiny):
    from NeuroADLib.methods.cond_ldm import load_cond_ldm, map_formula
    from NeuroADLib.pipeline import _map_description

    assert map_formula(CondLDMSettings()) == (
        "median5(min over shifts |d| <= 2 of |D(E(x)) - x_hat(. + d)|) in the brain eroded 3 "
        "times (eq. 8)")
    _, _, _, bundle = tiny
    described = json.loads((bundle / "manifest.json").read_text())["anomaly_maps"]["cond_ldm"]
    model = load_cond_ldm(bundle, options={"median_size": 1, "gaussian_sigma": 1.5,
                                           "against_reconstruction": 0})
    report = _map_description(described, model)
    assert described["formula"].startswith("median3(")  # the tiny bundle's, 1 erosion
    assert report["formula"] == ("gaussian1.5(min over shifts |d| <= 2 of |x - x_hat(. + d)|) "
                                 "in the brain eroded once (eq. 8)")
    assert report["lpips"] == described["lpips"]


def test_resumed_training_equals_uninterrupted_training(tiny, tmp_path):
    from safetensors.torch import load_file

    from NeuroADLib.training.cond_ldm import train_cond_ldm

    _, cohort, autoencoder, _ = tiny
    longer = replace(tiny_cond_ldm_training(), steps=3)
    train_cond_ldm(cohort, autoencoder, tmp_path / "parts", tiny_cond_ldm_training(),
                   log=_quiet)
    parts = train_cond_ldm(cohort, autoencoder, tmp_path / "parts", longer, log=_quiet)
    direct = train_cond_ldm(cohort, autoencoder, tmp_path / "direct", longer, log=_quiet)
    a = load_file(str(parts / "network" / "cond_ldm.safetensors"))
    b = load_file(str(direct / "network" / "cond_ldm.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_bundle_written_before_samples_existed_runs_and_reports_the_one_chain_it_had(
        tiny, tmp_path):
    import shutil

    from NeuroADLib.methods.base import load_method
    from NeuroADLib.methods.cond_ldm import load_cond_ldm
    from NeuroADLib.methods.registry import changed_options

    _, _, _, bundle = tiny
    old = tmp_path / "old"
    shutil.copytree(bundle, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["inference"]["samples"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert load_cond_ldm(old).settings.samples == 1 != COND_LDM_OPTIONS["samples"]
    assert load_cond_ldm(old, options={"samples": 3}).settings.samples == 3
    calibrated_at = load_method("cond_ldm", old).calibrated_at
    assert calibrated_at["samples"] == 1
    assert not changed_options("cond_ldm", {"samples": 1}, calibrated_at)
    assert changed_options("cond_ldm", {"samples": 4}, calibrated_at) == {"samples": 4}


def test_the_network_takes_the_latent_channels_of_its_first_stage(tiny, tmp_path):
    """A first stage with more latent channels (a more faithful one, issue 14) gets a UNet with
    as many input channels and twice as many outputs (eps and the variance), and runs."""
    from safetensors.torch import save_file

    from NeuroADLib.methods.cond_ldm import load_cond_ldm
    from NeuroADLib.networks.autoencoder import AUTOENCODER_CONFIGS, build_autoencoder
    from NeuroADLib.training.cond_ldm import train_cond_ldm

    _, cohort, _, _ = tiny
    config = replace(AUTOENCODER_CONFIGS["tiny"], latent_channels=4)
    folder = tmp_path / "ae4"
    folder.mkdir()
    torch.manual_seed(0)
    save_file(build_autoencoder(config).state_dict(), str(folder / "autoencoder.safetensors"))
    (folder / "manifest.json").write_text(json.dumps({"config": config.to_dict()}))
    bundle = train_cond_ldm(cohort, folder, tmp_path / "cond_ldm",
                            replace(tiny_cond_ldm_training(), steps=1), log=_quiet)
    network = json.loads((bundle / "network" / "manifest.json").read_text())["config"]
    assert (network["in_channels"], network["out_channels"]) == (4, 8)
    image = healthy_volume((32, 32, 32), 5)
    anomaly_map, pseudo_healthy = load_cond_ldm(bundle).predict(image, image > 0)[:2]
    assert anomaly_map.shape == pseudo_healthy.shape == image.shape

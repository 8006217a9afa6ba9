"""MAD-AD: training masks, the masked reverse process (eq. 6), the loss (eq. 5), and a tiny
bundle trained, resumed, calibrated and run end to end."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import tiny_mad_ad_bundle, tiny_mad_ad_training
from safetensors.torch import load_file

from NeuroADLib.diffusion.process import DiffusionProcess
from NeuroADLib.methods.mad_ad import MADADModel, MADADSettings, load_mad_ad, mad_ad_diffusion
from NeuroADLib.networks.masked_unet import MASKED_UNET_CONFIGS, MaskedUNet
from NeuroADLib.training.mad_ad import (
    foreign_start,
    masked_diffusion_loss,
    pathology_start,
    random_patch_mask,
    train_mad_ad,
)

TINY = tiny_mad_ad_training()


def _quiet(message):
    return None


def test_training_masks_cover_patches_of_the_brain_at_most_the_drawn_ratio():
    brain = torch.zeros(64, 1, 24, 28)
    brain[:, :, 2:22, 3:25] = 1
    masks = random_patch_mask(brain, np.random.default_rng(0), 0.4, (1, 2, 4, 8))
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert not masks[brain == 0].any()
    shares = masks.mean(dim=(1, 2, 3))
    assert shares.max() <= 0.4 + 1e-6 and shares.std() > 0  # ratio ~ U[0, 0.4]
    everywhere = random_patch_mask(torch.ones(16, 1, 24, 28), np.random.default_rng(1), 0.4,
                                   (8,))
    for mask in everywhere[:, 0]:  # 8 x 8 cells, aligned to the grid
        cells = mask[:24, :24].reshape(3, 8, 3, 8)
        assert torch.equal(cells.amin(dim=(1, 3)), cells.amax(dim=(1, 3)))


def test_loss_is_eq5_on_the_masked_forward_process():
    torch.manual_seed(0)
    denoiser = MaskedUNet(MASKED_UNET_CONFIGS["tiny"])
    process = DiffusionProcess(mad_ad_diffusion())
    z0, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    noised = (torch.rand(2, 1, 8, 8) > 0.5).float()
    t = torch.tensor([2, 7])
    loss, parts = masked_diffusion_loss(denoiser, process, z0, noised, t, noise, 0.1)
    estimate, logit = denoiser(process.q_sample(z0, t, noise, noised), t)
    expected_bce = torch.nn.functional.binary_cross_entropy(torch.sigmoid(logit), noised)
    assert parts["mse"] == pytest.approx(((estimate - z0) ** 2).mean().item(), rel=1e-5)
    assert parts["bce"] == pytest.approx(expected_bce.item(), rel=1e-4)
    assert loss.item() == pytest.approx(parts["mse"] + 0.1 * parts["bce"], rel=1e-5)


def test_foreign_fill_swaps_only_the_masked_positions_of_the_chosen_samples():
    z0, donors = torch.randn(3, 4, 6, 6), torch.randn(3, 4, 6, 6)
    noised = torch.zeros(3, 1, 6, 6)
    noised[:, :, 1:4, 2:5] = 1
    start = foreign_start(z0, donors, noised, torch.tensor([True, False, True]))
    inside = noised.expand_as(z0).bool()
    for k, chosen in enumerate((True, False, True)):
        assert torch.equal(start[k][~inside[k]], z0[k][~inside[k]])
        assert torch.allclose(start[k][inside[k]], (donors if chosen else z0)[k][inside[k]])


def test_the_loss_noises_the_foreign_start_and_still_targets_the_scan():
    torch.manual_seed(0)
    denoiser = MaskedUNet(MASKED_UNET_CONFIGS["tiny"])
    process = DiffusionProcess(mad_ad_diffusion())
    z0, start, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    noised = (torch.rand(2, 1, 8, 8) > 0.5).float()
    t = torch.tensor([0, 5])
    _, parts = masked_diffusion_loss(denoiser, process, z0, noised, t, noise, 0.1, start)
    estimate, _ = denoiser(process.q_sample(start, t, noise, noised), t)
    assert parts["mse"] == pytest.approx(((estimate - z0) ** 2).mean().item(), rel=1e-5)


def test_pathology_fill_joins_the_lesion_footprint_to_the_mask_of_the_chosen_samples():
    z0, lesioned = torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)
    noised = torch.zeros(2, 1, 6, 6)
    noised[:, :, 0, :] = 1
    footprints = torch.zeros(2, 1, 6, 6)
    footprints[:, :, 3:5, 3:5] = 1
    start, mask, diffused = pathology_start(z0, noised, lesioned, footprints,
                                            torch.tensor([True, False]))
    assert torch.equal(mask[0], torch.maximum(noised[0], footprints[0]))
    assert torch.equal(mask[1], noised[1])  # not chosen: the paper's mask alone
    assert torch.equal(diffused, mask)  # eq. 2 noises the whole mask
    lesion = footprints[0].expand_as(z0[0]).bool()
    assert torch.allclose(start[0][lesion], lesioned[0][lesion])
    assert torch.equal(start[0][~lesion], z0[0][~lesion])  # incl. the noise-only patches
    assert torch.equal(start[1], z0[1])


def test_clean_pathology_footprints_join_the_mask_but_are_not_noised():
    torch.manual_seed(0)
    z0, lesioned = torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)
    noised = torch.zeros(2, 1, 6, 6)
    noised[:, :, 3:, 0:4] = 1  # overlaps the footprint at rows 3-4, column 3
    footprints = torch.zeros(2, 1, 6, 6)
    footprints[:, :, 3:5, 3:5] = 1
    start, mask, diffused = pathology_start(z0, noised, lesioned, footprints,
                                            torch.tensor([True, False]), noise_footprints=False)
    assert torch.equal(mask[0], torch.maximum(noised[0], footprints[0]))
    assert torch.equal(diffused[0], noised[0] * (1 - footprints[0]))
    assert torch.equal(diffused[1], noised[1])  # not chosen: the paper's
    process = DiffusionProcess(mad_ad_diffusion())
    noise = torch.randn(2, 4, 6, 6)
    zt = process.q_sample(start, torch.tensor([9, 9]), noise, diffused)
    lesion = footprints[0].expand_as(z0[0]).bool()
    assert torch.allclose(zt[0][lesion], lesioned[0][lesion])  # clean at the noisiest level
    patches = (noised[0] * (1 - footprints[0])).expand_as(z0[0]).bool()
    assert not torch.allclose(zt[0][patches], z0[0][patches])


def test_pathology_slices_are_the_lesioned_slices_with_their_latent_footprints():
    from NeuroADLib.networks.autoencoder import build_autoencoder
    from NeuroADLib.synthesis.lesions import SynthesisConfig, synthesize
    from NeuroADLib.training.data import CohortSplit
    from NeuroADLib.training.mad_ad import SLICE_AUTOENCODER_CONFIGS
    from NeuroADLib.training.pathology_slices import (
        PathologySliceSettings,
        encode_pathology_slices,
    )
    from NeuroADLib.training.slice_data import SliceSet

    torch.manual_seed(0)
    autoencoder = build_autoencoder(SLICE_AUTOENCODER_CONFIGS["tiny"]).eval()
    rng = np.random.default_rng(0)
    brain = np.zeros((24, 32, 32), bool)
    brain[2:22, 4:28, 4:28] = True
    images = [(rng.random(brain.shape) * brain).astype(np.float32) for _ in range(2)]
    rows = [{"subject": name, "age": "", "sex": "", "split": "train"} for name in "ab"]
    slices = SliceSet.of(CohortSplit(images, [brain, brain], rows))
    synthesis = SynthesisConfig(perlin_radius_voxels=(2.0, 3.0), margin_voxels=3,
                                min_lesion_voxels=4)
    settings = PathologySliceSettings(versions=2, seed=5, synthesis=synthesis)
    made = encode_pathology_slices(autoencoder, slices, settings, "cpu", log=_quiet)
    again = encode_pathology_slices(autoencoder, slices, settings, "cpu", log=_quiet)
    assert torch.equal(made.rows, again.rows) and torch.equal(made.latents, again.latents)
    seed = int(np.random.SeedSequence([5, 1, 0]).generate_state(1)[0])
    expected = synthesize(images[1], brain, seed, None, synthesis)  # volume 1, version 0
    crossed = np.flatnonzero(expected.mask.any(axis=(1, 2)))
    pairs = [tuple(pair) for pair in slices.pairs[made.rows.numpy()]]
    first = pairs.index((1, int(crossed[0])))
    assert [z for k, z in pairs[first:first + len(crossed)]] == list(crossed)
    lesion = torch.from_numpy(expected.mask[crossed[0]].astype(np.float32))
    footprint = made.footprints[first, 0]
    assert torch.equal(footprint, torch.nn.functional.max_pool2d(lesion[None], 4)[0])
    with torch.no_grad():
        x = torch.from_numpy(expected.image[crossed[:1]][:, None])
        assert torch.allclose(made.latents[first], autoencoder.encode(x)[0][0], atol=1e-6)
    assert (made.footprints.flatten(1).sum(1) > 0).all()


class _FixedDenoiser(torch.nn.Module):
    """x0 estimate 0 everywhere; the mask head flags the left half of every latent."""

    config = MASKED_UNET_CONFIGS["tiny"]

    def forward(self, z, t):
        logit = torch.full((len(z), 1, *z.shape[2:]), -20.0)
        logit[..., : z.shape[-1] // 2] = 20.0
        return torch.zeros_like(z), logit


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_masked_reverse_updates_only_flagged_positions(eta):
    """Eq. 6: positions the mask head does not flag keep z'_T; flagged ones end at the x0
    estimate (the last step lands on alpha-bar = 1)."""
    model = MADADModel(torch.nn.Identity(), _FixedDenoiser(), 1.0,
                       DiffusionProcess(mad_ad_diffusion()), MADADSettings(eta=eta))
    z = torch.randn(3, 4, 6, 8)
    out = model.masked_reverse(z, torch.ones(3, 1, 6, 8), torch.randn(10, 3, 4, 6, 8))
    assert torch.equal(out[..., 4:], z[..., 4:])
    assert torch.allclose(out[..., :4], torch.zeros_like(out[..., :4]), atol=1e-6)
    outside = model.masked_reverse(z, torch.zeros(3, 1, 6, 8), torch.randn(10, 3, 4, 6, 8))
    assert torch.equal(outside, z)
    restore = torch.zeros(3, 1, 6, 8)
    restore[..., 6:] = 1  # the right quarter instead of the flagged left half
    given = model.masked_reverse(z, torch.ones(3, 1, 6, 8), torch.randn(10, 3, 4, 6, 8),
                                 restore)
    assert torch.equal(given[..., :6], z[..., :6])
    assert torch.allclose(given[..., 6:], torch.zeros_like(given[..., 6:]), atol=1e-6)


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    return tiny_mad_ad_bundle(tmp_path_factory.mktemp("mad_ad"))


def test_tiny_bundle_runs_to_the_contract(tiny_bundle):
    _, bundle = tiny_bundle
    model = load_mad_ad(bundle)
    rng = np.random.default_rng(3)
    brain = np.zeros((32, 32, 32), bool)
    brain[6:26, 6:26, 6:26] = True
    image = (rng.random(brain.shape) * brain).astype(np.float32)
    heard = []
    anomaly, healthy = model.predict(image, brain, None, lambda d, t: heard.append(d))
    assert anomaly.dtype == healthy.dtype == np.float32
    assert anomaly.shape == healthy.shape == brain.shape
    assert not anomaly[~brain].any() and not healthy[~brain].any()
    assert anomaly.min() >= 0 and anomaly.max() <= 1 + 1e-6  # eq. 8 rescales to [0, 1]
    assert heard == sorted(heard) and heard
    again, _ = load_mad_ad(bundle).predict(image, brain)
    assert np.array_equal(anomaly, again)
    model.batch_size = 3  # the noise of a slice does not depend on its batch
    assert np.allclose(model.predict(image, brain)[0], anomaly, atol=1e-5)
    other = load_mad_ad(bundle, options={"seed": 7}).predict(image, brain)[0]
    assert not np.array_equal(other, anomaly)


def test_registry_defaults_are_the_settings_defaults():
    from dataclasses import asdict

    from NeuroADLib.methods.registry import MAD_AD_OPTIONS

    settings = asdict(MADADSettings())
    assert settings.pop("reference") == "reconstruction"
    assert MAD_AD_OPTIONS == settings


def test_bundle_records_what_it_loads_from(tiny_bundle):
    import json

    _, bundle = tiny_bundle
    manifest = json.loads((bundle / "manifest.json").read_text())
    denoiser = json.loads((bundle / "denoiser" / "manifest.json").read_text())
    assert denoiser["diffusion"] == mad_ad_diffusion().to_dict()
    assert denoiser["config"] == MASKED_UNET_CONFIGS["tiny"].to_dict()
    assert manifest["inference"]["eta"] == 0.5 and manifest["training_data"]["validation"]
    assert (bundle / "calibration_mad_ad.json").is_file()
    assert (bundle / "intensity_standard.json").is_file()
    assert all(load_file(str(bundle / "denoiser" / "masked_unet.safetensors"))[k].dtype
               == torch.float16 for k in ["unet.conv_in.conv.weight"])


def test_resumed_training_equals_uninterrupted(tiny_bundle, tmp_path):
    cohort, whole = tiny_bundle
    longer = replace(TINY, diffusion=replace(TINY.diffusion, steps=4))
    train_mad_ad(cohort, tmp_path / "parts", TINY, log=_quiet)
    parts = train_mad_ad(cohort, tmp_path / "parts", longer, log=_quiet)
    direct = train_mad_ad(cohort, tmp_path / "direct", longer, log=_quiet)
    for name in ("autoencoder/autoencoder.safetensors", "denoiser/masked_unet.safetensors"):
        a, b = load_file(str(parts / name)), load_file(str(direct / name))
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a, b) for a, b in zip(
        load_file(str(whole / "denoiser/masked_unet.safetensors")).values(),
        load_file(str(direct / "denoiser/masked_unet.safetensors")).values(), strict=True))


def test_a_reused_autoencoder_is_shipped_as_it_is_and_recorded(tiny_bundle, tmp_path):
    """`autoencoder_from`: the UNet trains on the given first stage's latents, which the new
    bundle carries byte for byte, with where it came from; `denoiser_channels` sizes the UNet."""
    import json

    from NeuroADLib.hashing import sha256

    cohort, whole = tiny_bundle
    source = whole / "autoencoder"
    training = replace(TINY, autoencoder_from=str(source), denoiser_channels=(16, 24),
                       diffusion=replace(TINY.diffusion, mask_ratio_max=0.8,
                                         foreign_fill=0.5))
    bundle = train_mad_ad(cohort, tmp_path / "reused", training, log=_quiet)
    weights = "autoencoder.safetensors"
    assert sha256(bundle / "autoencoder" / weights) == sha256(source / weights)
    assert not (bundle / "autoencoder" / "checkpoint").exists()  # nothing trained there
    manifest = json.loads((bundle / "autoencoder" / "manifest.json").read_text())
    assert manifest["reused_from"]["sha256"] == sha256(source / weights)
    denoiser = json.loads((bundle / "denoiser" / "manifest.json").read_text())
    assert denoiser["config"]["channels"] == [16, 24]
    assert denoiser["training"]["mask_ratio_max"] == 0.8
    assert denoiser["training"]["foreign_fill"] == 0.5
    assert load_mad_ad(bundle).denoiser.config.channels == (16, 24)


def test_pathology_fill_trains_and_is_recorded(tiny_bundle, tmp_path):
    import json

    from NeuroADLib.training.pathology_slices import PathologySliceSettings

    cohort, whole = tiny_bundle
    pathology = replace(PathologySliceSettings(versions=1), synthesis=replace(
        PathologySliceSettings().synthesis, perlin_radius_voxels=(2.0, 3.0), margin_voxels=3,
        min_lesion_voxels=4))
    training = replace(TINY, autoencoder_from=str(whole / "autoencoder"), diffusion=replace(
        TINY.diffusion, pathology_fill=1.0, pathology_noised=False, pathology=pathology))
    bundle = train_mad_ad(cohort, tmp_path / "pathology", training, log=_quiet)
    denoiser = json.loads((bundle / "denoiser" / "manifest.json").read_text())
    assert denoiser["training"]["pathology_fill"] == 1.0
    assert denoiser["training"]["pathology_noised"] is False
    assert denoiser["training"]["pathology"]["versions"] == 1
    with pytest.raises(ValueError, match="alternatives"):
        replace(TINY.diffusion, pathology_fill=0.5, foreign_fill=0.5)


def test_an_autoencoder_that_cannot_be_reused_is_refused_before_anything_is_written(
        tiny_bundle, tmp_path):
    import json
    import shutil

    from NeuroADLib.errors import UsageError

    cohort, whole = tiny_bundle
    tampered = tmp_path / "tampered"
    shutil.copytree(whole / "autoencoder", tampered)
    with (tampered / "autoencoder.safetensors").open("r+b") as handle:
        handle.seek(-1, 2)
        last = handle.read(1)
        handle.seek(-1, 2)
        handle.write(bytes([last[0] ^ 1]))
    volumetric = tmp_path / "volumetric"
    shutil.copytree(whole / "autoencoder", volumetric)
    manifest = json.loads((volumetric / "manifest.json").read_text())
    (volumetric / "manifest.json").write_text(json.dumps({**manifest, "method": "autoencoder"}))
    for folder, message in ((tampered, "sha256"), (volumetric, "slice autoencoder"),
                            (tmp_path / "absent", "no trained autoencoder")):
        out = tmp_path / f"from_{folder.name}"
        with pytest.raises(UsageError, match=message):
            train_mad_ad(cohort, out, replace(TINY, autoencoder_from=str(folder)), log=_quiet)
        assert not out.exists()


def test_denoiser_widths_must_name_every_level():
    with pytest.raises(ValueError, match="2 levels"):
        replace(TINY, denoiser_channels=(16, 24, 32))

"""Second-stage training: runs on encoded latents, resumes exactly, records its provenance."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_cadd_bundle, tiny_cadd_stages

from NeuroADLib.errors import UsageError
from NeuroADLib.subject import Subject

torch = pytest.importorskip("torch")
pytest.importorskip("einops")

from NeuroADLib.training.latent_diffusion import (  # noqa: E402
    LatentDiffusionTraining,
    train_latent_diffusion,
)

WOMAN = Subject(44.0, "F")


def quiet(message: str) -> None:
    return None


@pytest.fixture(scope="module")
def stage_one(tmp_path_factory):
    torch.set_num_threads(1)
    return tiny_cadd_stages(tmp_path_factory.mktemp("ldm"))


def test_resumed_training_equals_uninterrupted(stage_one, tmp_path):
    from safetensors.torch import load_file

    cohort, autoencoder = stage_one
    settings = dict(batch_size=2, checkpoint_every=2, log_every=2)
    whole = train_latent_diffusion(cohort, autoencoder, tmp_path / "whole", "tiny",
                                   LatentDiffusionTraining(steps=4, **settings), log=quiet)
    train_latent_diffusion(cohort, autoencoder, tmp_path / "parts", "tiny",
                           LatentDiffusionTraining(steps=2, **settings), log=quiet)
    parts = train_latent_diffusion(cohort, autoencoder, tmp_path / "parts", "tiny",
                                   LatentDiffusionTraining(steps=4, **settings), log=quiet)
    a = load_file(str(whole / "transformer.safetensors"))
    b = load_file(str(parts / "transformer.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (parts / "checkpoint" / "latents.safetensors").is_file()  # encoded once, reused
    manifest = json.loads((whole / "manifest.json").read_text())
    assert manifest["config"]["latent_shape"] == [4, 4, 4]
    assert manifest["latent_scale"] > 0
    assert manifest["autoencoder"]["id"].startswith("autoencoder-tiny")
    # harmonised scans with one augmented copy each: twice as many latents as subjects
    from safetensors.torch import load_file as load

    latents = load(str(parts / "checkpoint" / "latents.safetensors"))["latents"]
    assert manifest["training_data"]["harmonised"] is True
    assert len(latents) == 2 * len(manifest["training_data"]["train"])


def test_cadd_bundle_calibrates_every_variant(stage_one, tmp_path):
    import numpy as np
    import SimpleITK as sitk

    from NeuroADLib.methods import load_method

    cohort, autoencoder = stage_one
    bundle = tiny_cadd_bundle(tmp_path, cohort, autoencoder)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert set(manifest["metrics"]["validation_reconstruction"]) == {
        "autoencoder", "cadd", "cadd_nocov", "cadd_noinpaint", "ldm", "ldm_tavg"}
    assert "autoencoder/autoencoder.safetensors" in manifest["files"]
    assert "calibration.log" in manifest["files"]
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(cohort / "subjects" / "s1_image.nii.gz")))
    brain = image > 0
    maps = {}
    for name in ("cadd", "ldm"):
        method = load_method(name, bundle)
        assert method.calibration.threshold > 0
        maps[name] = method.anomaly_map(image, brain, WOMAN)
        assert maps[name].shape == image.shape and np.all(maps[name][~brain] == 0)
    assert not np.array_equal(maps["cadd"], maps["ldm"])
    again = load_method("cadd", bundle).anomaly_map(image, brain, WOMAN)
    assert np.array_equal(again, maps["cadd"])  # seeded inference: same input, same output
    # against the first stage's own reconstruction, |D(E(x)) - x^|, by default; the paper's
    # |x - x^| with the option 0, from the same pseudo-healthy image
    from NeuroADLib.networks.autoencoder import decode_image, encode_image

    model = load_method("cadd", bundle).model
    anomaly, healthy = model.predict(image, brain, WOMAN)
    paper = load_method("cadd", bundle, {"against_reconstruction": 0}).model
    paper_anomaly, paper_healthy = paper.predict(image, brain, WOMAN)
    np.testing.assert_array_equal(healthy, paper_healthy)
    reconstruction = decode_image(model.autoencoder, encode_image(model.autoencoder, image))
    np.testing.assert_allclose(anomaly, np.abs(reconstruction * brain - healthy) * brain,
                               atol=1e-4)  # the latent scale applied and undone
    np.testing.assert_allclose(paper_anomaly, np.abs(image * brain - healthy) * brain,
                               atol=1e-4)
    # the post-filter is scipy's Gaussian of that map, zeroed outside the eroded brain
    from scipy import ndimage

    smoothed, _ = load_method("cadd", bundle, {"gaussian_sigma": 1.5, "erosion": 1}
                              ).model.predict(image, brain, WOMAN)
    eroded = ndimage.binary_erosion(brain, ndimage.generate_binary_structure(3, 1))
    np.testing.assert_allclose(smoothed, ndimage.gaussian_filter(anomaly.astype(np.float64), 1.5)
                               * eroded, atol=1e-6)
    # the cohort percentiles cover every level up to T, so a longer chain finds its rows ...
    longer = load_method("cadd", bundle, {"t_int": 300, "respacing": 10})
    assert longer.anomaly_map(image, brain, WOMAN).shape == image.shape
    # ... and a level without percentiles is a usage error, not a shape error
    with pytest.raises(UsageError, match="level_step"):
        load_method("cadd", bundle, {"level_step": 30, "respacing": 10}).anomaly_map(
            image, brain, WOMAN)


def test_cohort_kl_percentiles_match_numpy_at_every_level(stage_one, tmp_path):
    import numpy as np

    from NeuroADLib.diffusion.inpainting import InpaintingSettings, kl_maps
    from NeuroADLib.methods.cadd import cohort_kl_percentiles, load_cadd
    from NeuroADLib.preprocessing.harmonisation import IntensityStandard
    from NeuroADLib.training.data import load_split
    from NeuroADLib.training.harmonisation import harmonised_split

    cohort, autoencoder = stage_one
    bundle = tiny_cadd_bundle(tmp_path, cohort, autoencoder, variants=["ldm"])
    model = load_cadd(bundle, "cadd")
    assert model.cohort_percentiles["levels"].tolist() == list(range(50, 1001, 50))
    # the bundle's statistics are of the validation scans harmonised to its intensity standard
    standard = IntensityStandard.load(bundle)
    validation = harmonised_split(load_split(cohort, "validation"), standard)
    latents = [model.encode(image) for image in validation.images]
    people = [Subject(age, sex) for age, sex in zip(validation.ages, validation.sexes,
                                                    strict=True)]
    table = cohort_kl_percentiles(model, latents, people)
    for key in ("covariates", "none"):
        torch.testing.assert_close(model.cohort_percentiles[key], table[key])  # as stored
    at_150 = InpaintingSettings(t_int=150)  # its last level, U = 150, is row 2
    maps = [kl_maps(model.diffusion, model.denoiser(person), z0, at_150)[-1].numpy()
            for z0, person in zip(latents, people, strict=True)]
    # stored as 8-bit log codes: within half a code step of the logarithm (kl_table)
    reference = np.percentile(maps, 95, axis=0)
    half_step = float(np.log(reference.max() / reference.min())) / 255 / 2
    np.testing.assert_allclose(np.log(table["covariates"][2].numpy()), np.log(reference),
                               atol=half_step + 2e-3)
    model.settings = at_150
    torch.testing.assert_close(model.cohort_percentiles_at_levels(),
                               table["covariates"][:3])
    check_the_diffusion_process_is_the_bundles(bundle)


def test_cached_latents_are_reused_only_for_the_same_autoencoder_subjects_and_scans(
        tmp_path):
    from NeuroADLib.training.latent_diffusion import cached_latents

    path = tmp_path / "latents.safetensors"
    calls = []

    def compute(value):
        def run():
            calls.append(value)
            return torch.full((2, 3, 1, 1, 1), value)
        return run

    first = cached_latents(path, "abc", ["s1", "s2"], compute(1.0))
    again = cached_latents(path, "abc", ["s1", "s2"], compute(2.0))
    assert torch.equal(first, again) and calls == [1.0]
    other_autoencoder = cached_latents(path, "def", ["s1", "s2"], compute(3.0))
    other_subjects = cached_latents(path, "def", ["s1", "s3"], compute(4.0))
    assert other_autoencoder[0, 0, 0, 0, 0] == 3.0 and other_subjects[0, 0, 0, 0, 0] == 4.0
    other_scans = cached_latents(path, "def", ["s1", "s3"], compute(5.0), "harmonised")
    assert other_scans[0, 0, 0, 0, 0] == 5.0
    assert calls == [1.0, 3.0, 4.0, 5.0]


def test_an_interrupted_calibration_resumes_with_the_variants_still_to_do(stage_one, tmp_path):
    """A variant whose calibration and figures were kept is not computed again; the manifest
    lists every variant asked for."""
    cohort, autoencoder = stage_one
    first = tiny_cadd_bundle(tmp_path, cohort, autoencoder, variants=["ldm"])
    kept = (first / "calibration_ldm.json").read_text()
    lines = []
    from NeuroADLib.methods.cadd import CADDSettings
    from NeuroADLib.training.cadd_bundle import build_cadd_bundle

    again = build_cadd_bundle(cohort, autoencoder, first.parent / "transformer", first,
                              CADDSettings(t_int=100, respacing=10),
                              variants=["ldm", "ldm_tavg"], log=lines.append)
    assert any(line.startswith("ldm: ") and line.endswith("(resumed)") for line in lines)
    assert not any(line.startswith("ldm_tavg: ") and "resumed" in line for line in lines)
    assert (again / "calibration_ldm.json").read_text() == kept
    manifest = json.loads((again / "manifest.json").read_text())
    assert manifest["variants"] == ["ldm", "ldm_tavg"]


def check_the_diffusion_process_is_the_bundles(bundle):
    """load_cadd builds the diffusion process the transformer's manifest records, not today's
    defaults, and refuses a manifest without one."""
    from NeuroADLib.errors import ModelError
    from NeuroADLib.methods.cadd import load_cadd

    manifest_path = bundle / "transformer" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["diffusion"] == {"schedule": "linear_beta", "num_timesteps": 1000,
                                     "beta_start": 0.0015, "beta_end": 0.0195}
    manifest["diffusion"]["beta_end"] = 0.02
    manifest_path.write_text(json.dumps(manifest))
    assert float(load_cadd(bundle, "cadd").diffusion.betas[-1]) == pytest.approx(0.02)
    del manifest["diffusion"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="does not record its diffusion process"):
        load_cadd(bundle, "cadd")

"""First-stage autoencoder training: losses, exact resume, and the written bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import fabricated_cohort

torch = pytest.importorskip("torch")
pytest.importorskip("einops")

from NeuroADLib.training.autoencoder import (  # noqa: E402
    AutoencoderTraining,
    kl_divergence,
    random_patch,
    train_autoencoder,
    window_patch,
)
from NeuroADLib.training.loop import cosine_decay  # noqa: E402

SHAPE = (32, 32, 32)


def test_kl_matches_the_closed_form():
    mu = torch.tensor([[0.5, -1.0]])
    sigma = torch.tensor([[2.0, 0.5]])
    expected = 0.5 * sum(m**2 + s**2 - np.log(s**2) - 1 for m, s in [(0.5, 2.0), (-1.0, 0.5)])
    assert float(kl_divergence(mu, sigma)) == pytest.approx(expected, rel=1e-6)


def test_patches_are_brain_centred_and_seeded():
    image = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    mask = np.zeros(SHAPE, bool)
    mask[12, 16, 12] = True
    a = random_patch([image], [mask], 8, np.random.default_rng(1))
    b = random_patch([image], [mask], 8, np.random.default_rng(1))
    assert a.shape == (8, 8, 8) and np.array_equal(a, b)
    assert image[12, 16, 12] in a


def test_the_coding_windows_are_those_the_sliding_window_coder_visits():
    from monai.inferers import sliding_window_inference

    from NeuroADLib.networks.autoencoder import WINDOW_OVERLAP, coding_windows

    shape, window = (24, 28, 20), 8
    # each voxel holds its own flat index: a window's first value says where it starts
    index = torch.arange(np.prod(shape), dtype=torch.float32).reshape(1, 1, *shape)
    visited = []

    def record(patch):
        visited.extend(int(v) for v in patch[:, 0, 0, 0, 0])
        return patch

    sliding_window_inference(index, (window,) * 3, 4, record, overlap=WINDOW_OVERLAP,
                             mode="gaussian")
    starts = [np.unravel_index(v, shape) for v in visited]
    windows = coding_windows(shape, window)
    assert sorted(tuple(int(s.start) for s in w) for w in windows) == sorted(
        tuple(int(i) for i in start) for start in starts)
    assert all(w[i].stop - w[i].start == window for w in windows for i in range(3))


def test_window_patches_are_coding_windows_and_seeded():
    from NeuroADLib.networks.autoencoder import coding_windows

    image = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    windows = coding_windows(SHAPE, 16)
    a = window_patch([image], windows, np.random.default_rng(3))
    assert np.array_equal(a, window_patch([image], windows, np.random.default_rng(3)))
    crops = [image[w] for w in windows]
    assert any(np.array_equal(a, c) or np.array_equal(a, c[..., ::-1]) for c in crops)


def test_an_unknown_patch_placement_is_refused():
    with pytest.raises(ValueError, match="patch_placement"):
        AutoencoderTraining(patch_placement="anywhere")


def test_resumed_training_equals_uninterrupted_training(tmp_path):
    torch.set_num_threads(1)
    cohort = fabricated_cohort(tmp_path / "cohort", SHAPE, 8)
    # decay_from 2: the rate of steps 0-2 is the base rate in both runs, then falls to zero
    settings = dict(patch=32, adversarial_start=2, checkpoint_every=3, log_every=3,
                    decay_from=2)
    whole = train_autoencoder(cohort, tmp_path / "whole", "tiny",
                              AutoencoderTraining(steps=6, **settings), log=lambda m: None)
    train_autoencoder(cohort, tmp_path / "parts", "tiny",
                      AutoencoderTraining(steps=3, **settings), log=lambda m: None)
    parts = train_autoencoder(cohort, tmp_path / "parts", "tiny",
                              AutoencoderTraining(steps=6, **settings), log=lambda m: None)
    from safetensors.torch import load_file

    a = load_file(str(whole / "autoencoder.safetensors"))
    b = load_file(str(parts / "autoencoder.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    history = json.loads((parts / "checkpoint" / "state.json").read_text())["history"]
    assert [record["lr"] for record in history] == pytest.approx(
        [cosine_decay(step, 3e-4, 2, 6) for step in range(6)])
    manifest = json.loads((whole / "manifest.json").read_text())
    assert manifest["training"]["decay_from"] == 2
    quality = manifest["metrics"]["validation_reconstruction"]
    assert set(quality) == {"mae", "psnr", "ssim"} and quality["mae"] > 0
    assert manifest["perceptual_loss"].startswith("not used")
    assert "autoencoder.safetensors" in manifest["files"]
    # harmonised by default, with one augmented copy per scan: the standard travels along
    from NeuroADLib.preprocessing.harmonisation import IntensityStandard

    assert manifest["training_data"]["harmonised"] is True
    assert manifest["training"]["acquisition_copies"] == 1
    assert "intensity_standard.json" in manifest["files"]
    assert IntensityStandard.load(whole) is not None


def test_training_without_harmonisation_keeps_the_stored_scans(tmp_path):
    torch.set_num_threads(1)
    cohort = fabricated_cohort(tmp_path / "cohort", SHAPE, 8)
    folder = train_autoencoder(cohort, tmp_path / "raw", "tiny",
                               AutoencoderTraining(steps=1, patch=32, harmonise=False,
                                                   acquisition_copies=0), log=lambda m: None)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["training_data"]["harmonised"] is False
    assert not (folder / "intensity_standard.json").exists()


def test_fine_tuning_starts_from_the_given_weights_and_records_them(tmp_path):
    from safetensors.torch import load_file

    from NeuroADLib.errors import UsageError
    from NeuroADLib.hashing import sha256

    torch.set_num_threads(1)
    cohort = fabricated_cohort(tmp_path / "cohort", SHAPE, 8)
    quiet = {"log": lambda m: None}
    source = train_autoencoder(cohort, tmp_path / "source", "tiny", AutoencoderTraining(
        steps=2, patch=32, adversarial_start=5), **quiet)
    # at a learning rate of zero the fine-tuned weights are the starting ones
    still = train_autoencoder(cohort, tmp_path / "still", "tiny", AutoencoderTraining(
        steps=1, patch=32, adversarial_start=5, learning_rate=0.0, init_from=str(source)),
        **quiet)
    before = load_file(str(source / "autoencoder.safetensors"))
    after = load_file(str(still / "autoencoder.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    record = json.loads((still / "manifest.json").read_text())["initial_weights"]
    assert record["sha256"] == sha256(source / "autoencoder.safetensors")
    assert record["training"]["steps"] == 2
    # from scratch the first step differs
    scratch = train_autoencoder(cohort, tmp_path / "scratch", "tiny", AutoencoderTraining(
        steps=1, patch=32, adversarial_start=5, learning_rate=0.0), **quiet)
    assert json.loads((scratch / "manifest.json").read_text())["initial_weights"] is None
    fresh = load_file(str(scratch / "autoencoder.safetensors"))
    assert not all(torch.equal(before[k], fresh[k]) for k in before)
    with pytest.raises(UsageError, match="another architecture"):
        train_autoencoder(cohort, tmp_path / "other", "half", AutoencoderTraining(
            steps=1, patch=32, init_from=str(source)), **quiet)
    assert not (tmp_path / "other").exists()  # refused before anything is written


def test_a_saved_autoencoder_loads_from_the_architecture_its_manifest_records(tmp_path):
    from safetensors.torch import save_file

    from NeuroADLib.errors import ModelError
    from NeuroADLib.networks.autoencoder import (
        AUTOENCODER_CONFIGS,
        AutoencoderConfig,
        build_autoencoder,
        load_autoencoder,
    )

    tiny = AUTOENCODER_CONFIGS["tiny"]
    network = build_autoencoder(tiny)
    save_file(network.state_dict(), str(tmp_path / "autoencoder.safetensors"))
    # a name whose table entry is another architecture: the recorded config decides
    manifest = {"config": tiny.to_dict(), "config_name": "default"}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    loaded, read = load_autoencoder(tmp_path)
    assert read == manifest and AutoencoderConfig.from_dict(read["config"]) == tiny
    state = network.state_dict()
    assert all(torch.equal(state[k], v) for k, v in loaded.state_dict().items())
    (tmp_path / "manifest.json").write_text(json.dumps({"config_name": "tiny"}))
    with pytest.raises(ModelError, match="config"):
        load_autoencoder(tmp_path)


@pytest.mark.parametrize(("name", "latent_shape", "factor"), [
    ("latent16", (1, 16, 8, 8, 8), 4),  # 16 values for every 4x4x4 block
    ("half", (1, 4, 16, 16, 16), 2),  # 4 values for every 2x2x2 block
])
def test_the_extra_first_stages_keep_the_latent_they_name(name, latent_shape, factor):
    from NeuroADLib.networks.autoencoder import AUTOENCODER_CONFIGS, build_autoencoder

    network = build_autoencoder(AUTOENCODER_CONFIGS[name]).eval()
    with torch.no_grad():
        mean = network.encode(torch.zeros(1, 1, 32, 32, 32))[0]
        decoded = network.decode(mean)
    assert mean.shape == latent_shape and decoded.shape == (1, 1, 32, 32, 32)
    assert network.downsampling == factor

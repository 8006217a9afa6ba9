"""Second-stage training: runs on encoded latents, resumes exactly, records its provenance."""

from __future__ import annotations

import json

import pytest
from conftest import fabricated_cohort

torch = pytest.importorskip("torch")
pytest.importorskip("einops")

from NeuroADLib.training.autoencoder import AutoencoderTraining, train_autoencoder  # noqa: E402
from NeuroADLib.training.latent_diffusion import (  # noqa: E402
    LatentDiffusionTraining,
    train_latent_diffusion,
)


def quiet(message: str) -> None:
    return None


@pytest.fixture(scope="module")
def stage_one(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ldm")
    cohort = fabricated_cohort(root / "cohort", (32, 32, 32), 8)
    autoencoder = train_autoencoder(cohort, root / "ae", "tiny",
                                    AutoencoderTraining(steps=2, patch=32, adversarial_start=5),
                                    log=quiet)
    return cohort, autoencoder


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
    manifest = json.loads((whole / "manifest.json").read_text())
    assert manifest["config"]["latent_shape"] == [4, 4, 4]
    assert manifest["latent_scale"] > 0
    assert manifest["autoencoder"]["id"].startswith("autoencoder-tiny")

"""SparK-style masked pre-training of cDDPM's encoder: the sparse emulation (masked pixels
cannot reach any feature, batch norm counts visible positions only), the hidden-patch loss, the
encoder handed back as a plain ResNet, and the cDDPM trainer with pre-training resumed
exactly."""

import json
from dataclasses import replace

import pytest
import torch
from conftest import fabricated_cohort, tiny_cddpm_training
from torch import nn

from NeuroADLib.models.weights import load_weights
from NeuroADLib.networks.conditioned_unet import (
    CONDITIONED_UNET_CONFIGS,
    build_encoder,
    resnet_features,
)
from NeuroADLib.training.cddpm import train_cddpm
from NeuroADLib.training.masked_pretraining import (
    STAGES,
    ActiveMask,
    MaskedPretraining,
    SparKModel,
    SparseBatchNorm,
    masked_patch_loss,
    patch_normalised,
    pretrain_encoder,
    random_visible_patches,
)

SIZE = (32, 48)


def _quiet(message):
    return None


def _model(seed: int = 0) -> SparKModel:
    torch.manual_seed(seed)
    return SparKModel(build_encoder(CONDITIONED_UNET_CONFIGS["tiny"]), SIZE, MaskedPretraining())


def test_patches_are_the_encoders_downsampling():
    model = _model()
    assert model.patch == 16  # MONAI's ResNet: max-pool and three strided stages
    with pytest.raises(ValueError, match="patches"):
        SparKModel(build_encoder(CONDITIONED_UNET_CONFIGS["tiny"]), (32, 40),
                   MaskedPretraining())


def test_masked_pixels_reach_no_feature():
    """The sparse-convolution property: what lies under hidden patches changes nothing the
    encoder computes, and hidden positions of every scale stay zero."""
    model = _model().train()
    visible = torch.tensor([[[[True, False, True], [False, True, False]]]]).repeat(2, 1, 1, 1)
    x = torch.randn(2, 1, *SIZE)
    other = x.clone()
    model.active.patches = visible
    hidden = ~model.active.at(x)
    other[hidden] = torch.randn(int(hidden.sum()))
    a = resnet_features(model.encoder, x * model.active.at(x), STAGES)
    b = resnet_features(model.encoder, other * model.active.at(other), STAGES)
    for fa, fb in zip(a, b, strict=True):
        assert torch.equal(fa, fb)
        assert not fa[~model.active.at(fa).expand_as(fa)].any()
    assert not torch.equal(x, other)


def test_sparse_batch_norm_counts_visible_positions_only():
    active = ActiveMask()
    active.patches = torch.tensor([[[[True, False], [False, True]]]])
    norm = nn.BatchNorm2d(3).train()
    reference = nn.BatchNorm1d(3).train()
    x = torch.randn(1, 3, 4, 4) * 3 + 1
    out = SparseBatchNorm(norm, active)(x)
    visible = active.at(x)[0, 0]
    expected = reference(x[0].permute(1, 2, 0)[visible])
    assert torch.allclose(out[0].permute(1, 2, 0)[visible], expected, atol=1e-6)
    assert not out[0].permute(1, 2, 0)[~visible].any()
    assert torch.allclose(norm.running_mean, reference.running_mean)
    assert torch.allclose(norm.running_var, reference.running_var)


def test_exactly_the_ratio_of_patches_is_hidden():
    visible = random_visible_patches(5, (6, 7), 0.65, torch.Generator().manual_seed(0))
    assert visible.shape == (5, 1, 6, 7)
    assert ((~visible).flatten(1).sum(dim=1) == round(0.65 * 42)).all()
    again = random_visible_patches(5, (6, 7), 0.65, torch.Generator().manual_seed(0))
    assert torch.equal(visible, again)


def test_patch_normalisation_is_per_patch():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4) ** 1.5
    out = patch_normalised(x, 2)
    for i in (0, 2):
        for j in (0, 2):
            tile = x[1, 0, i:i + 2, j:j + 2]
            expected = (tile - tile.mean()) / (tile.var(unbiased=False) + 1e-6).sqrt()
            assert torch.allclose(out[1, 0, i:i + 2, j:j + 2], expected, atol=1e-5)


def test_loss_is_taken_on_hidden_patches_only():
    x = torch.rand(1, 1, 4, 4)
    visible = torch.tensor([[[[True, False], [True, True]]]])
    target = patch_normalised(x, 2)
    reconstruction = target.clone()
    reconstruction[..., :2, :2] += 5.0  # a visible patch: not scored
    assert masked_patch_loss(reconstruction, x, visible, 2).item() == pytest.approx(0.0, abs=1e-9)
    reconstruction[..., :2, 2:] += 1.0  # the hidden one
    assert masked_patch_loss(reconstruction, x, visible, 2).item() == pytest.approx(1.0)


def _draw(size, rng):
    return torch.from_numpy(rng.standard_normal((size, 1, *SIZE)).astype("float32"))


def test_pretraining_resumes_exactly_and_returns_plain_weights(tmp_path):
    torch.set_num_threads(1)
    short, long = MaskedPretraining(steps=2, batch_size=2), MaskedPretraining(steps=4,
                                                                              batch_size=2)
    encoders = []
    for folder, runs in (("parts", (short, long)), ("direct", (long,))):
        for settings in runs:
            torch.manual_seed(0)
            encoder = build_encoder(CONDITIONED_UNET_CONFIGS["tiny"])
            weights = pretrain_encoder(encoder, _draw, SIZE, tmp_path / folder, settings, 0,
                                       1, 1, log=_quiet)
        encoders.append((encoder, weights))
    (encoder, parts), (_, direct) = encoders
    assert parts.keys() == direct.keys() == build_encoder(
        CONDITIONED_UNET_CONFIGS["tiny"]).state_dict().keys()
    assert all(torch.equal(parts[k], direct[k]) for k in parts)
    assert all(torch.equal(parts[k], v) for k, v in encoder.state_dict().items())
    assert not any(isinstance(m, SparseBatchNorm) for m in encoder.modules())


def test_cddpm_trains_from_a_pretrained_encoder(tmp_path):
    torch.set_num_threads(1)
    cohort = fabricated_cohort(tmp_path / "cohort", (32, 32, 32), 8)
    training = replace(tiny_cddpm_training(),
                       pretraining=MaskedPretraining(steps=2, batch_size=4))
    lines = []
    pretrained = train_cddpm(cohort, tmp_path / "pretrained", training, log=lines.append)
    plain = train_cddpm(cohort, tmp_path / "plain", tiny_cddpm_training(), log=_quiet)
    a, b = (load_weights(folder / "network", "cddpm") for folder in (pretrained, plain))
    assert a.keys() == b.keys()  # the bundle holds a plain ResNet encoder
    assert not all(torch.equal(a[k], b[k]) for k in a if k.startswith("encoder."))
    assert any("masked modelling" in line for line in lines)
    manifest = json.loads((pretrained / "network" / "manifest.json").read_text())
    assert manifest["training"]["pretraining"]["steps"] == 2
    assert manifest["training"]["pretraining"]["mask_ratio"] == 0.65


def test_the_command_line_passes_the_pretraining_steps(tmp_path, monkeypatch):
    import NeuroADLib.training.cddpm as trainer
    from NeuroADLib.cli import main

    received = []
    monkeypatch.setattr(trainer, "train_cddpm", lambda cohort, out, training, device:
                        received.append(training))
    arguments = ["train", "cddpm", "--cohort", str(tmp_path), "--out", str(tmp_path / "m"),
                 "--device", "cpu", "--threads", "1"]
    assert main(arguments + ["--pretrain-steps", "300"]) == 0
    assert main(arguments) == 0
    assert [t.pretraining.steps for t in received] == [300, 0]
    assert received[0].pretraining.mask_ratio == 0.65
    with pytest.raises(SystemExit):
        main(arguments + ["--pretrain-steps", "0"])

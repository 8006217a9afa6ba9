"""The Latte-style transformer: shapes, adaLN-Zero start, attention grouping, conditioning."""

from __future__ import annotations

from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")

from NeuroADLib.networks.latte import (  # noqa: E402
    LATTE_CONFIGS,
    LatteBlock,
    LatteConfig,
    LatteTransformer,
    sincos_position_3d,
)


def randomise(module: torch.nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)


def test_output_shape_and_zero_start():
    config = LatteConfig(latent_shape=(4, 6, 4), patch=2, hidden=24, depth=2, heads=2)
    model = LatteTransformer(config)
    z = torch.randn(2, 3, 4, 6, 4)
    out = model(z, torch.tensor([5, 900]), torch.tensor([30.0, 70.0]), torch.tensor([1, -1]))
    assert out.shape == (2, 6, 4, 6, 4)
    assert torch.count_nonzero(out) == 0  # adaLN-Zero: the untrained model predicts zeros


@pytest.mark.parametrize("within_slice", [True, False])
def test_attention_mixes_only_within_its_group(within_slice):
    torch.manual_seed(0)
    block = LatteBlock(hidden=8, heads=2, mlp_ratio=2.0, within_slice=within_slice)
    randomise(block)
    grid = (3, 2, 2)
    x = torch.randn(1, 12, 8)
    c = torch.randn(1, 8)
    changed = x.clone()
    changed[0, 0] += torch.linspace(-1.0, 1.0, 8)  # token (d=0, h=0, w=0); not a constant,
    # which LayerNorm would cancel
    delta = (block(changed, c, grid) - block(x, c, grid)).abs().sum(-1)[0].reshape(grid)
    affected = delta > 1e-6
    if within_slice:  # only depth slice 0 sees it
        assert affected[0].all() and not affected[1:].any()
    else:  # only position (h=0, w=0) in every slice sees it
        assert affected[:, 0, 0].all() and not affected[:, 1:, :].any()
        assert not affected[:, 0, 1:].any()


def test_covariates_change_the_prediction_and_can_be_switched_off():
    config = LATTE_CONFIGS["tiny"]
    model = LatteTransformer(config)
    randomise(model, seed=1)
    z, t = torch.randn(1, 3, 4, 4, 4), torch.tensor([100])
    young = model(z, t, torch.tensor([25.0]), torch.tensor([1]))
    old = model(z, t, torch.tensor([80.0]), torch.tensor([1]))
    assert (young - old).abs().max() > 1e-4
    blind = LatteTransformer(LatteConfig(**{**config.__dict__, "use_covariates": False}))
    randomise(blind, seed=1)
    assert torch.equal(blind(z, t, torch.tensor([25.0]), torch.tensor([1])),
                       blind(z, t, torch.tensor([80.0]), torch.tensor([-1])))


def test_position_code_distinguishes_every_token():
    code = sincos_position_3d((4, 5, 3), 48)
    assert code.shape == (60, 48)
    assert torch.unique(code, dim=0).shape[0] == 60


def test_paper_configuration_size():
    config = LATTE_CONFIGS["paper"]
    assert (config.depth, config.hidden, config.heads) == (28, 1024, 16)


def test_a_finer_latent_keeps_the_token_grid_with_a_larger_patch():
    base = LATTE_CONFIGS["default"]  # 24 x 28 x 24 latent, patch 4: 6 x 7 x 6 tokens
    half = base.for_latent(4, (48, 56, 48))
    assert (half.latent_channels, half.latent_shape, half.patch) == (4, (48, 56, 48), 8)
    assert (half.hidden, half.depth) == (base.hidden, base.depth)
    model = LatteTransformer(replace(half, hidden=24, depth=1, heads=2))
    out = model(torch.randn(1, 4, 48, 56, 48), torch.tensor([3]))
    assert out.shape == (1, 8, 48, 56, 48)


def test_a_latent_the_token_grid_does_not_divide_is_refused():
    with pytest.raises(ValueError, match="6 x 7 x 6 token grid"):
        LATTE_CONFIGS["default"].for_latent(4, (48, 56, 40))

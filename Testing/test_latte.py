"""The Latte-style transformer: shapes, adaLN-Zero start, attention grouping, conditioning."""

from __future__ import annotations

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


def test_a_latent_is_taken_where_its_tokens_fit_through_the_hidden_width():
    base = LATTE_CONFIGS["default"]  # 3 x 4^3 = 192 values a token, 192 wide
    bundled = base.for_latent(3, (24, 28, 24))
    assert (bundled.latent_channels, bundled.latent_shape, bundled.patch) == (3, (24, 28, 24), 4)
    with pytest.raises(ValueError, match="not tiled"):
        base.for_latent(3, (24, 28, 22))
    # the `half` first stage: 4 x 4^3 = 256 values a token, more than 192 numbers can carry
    with pytest.raises(ValueError, match=r"256 latent values .* MSE 0\.250"):
        base.for_latent(4, (48, 56, 48))
    assert LATTE_CONFIGS["paper"].for_latent(4, (48, 56, 48)).hidden == 1024


def test_a_linear_bottleneck_cannot_predict_noise_better_than_the_closed_form():
    """The floor the refusal quotes: a rank-h linear map can predict n i.i.d. unit values
    from themselves no better than MSE 1 - h / n (exactly, for the best map, an orthogonal
    projection, here fitted on one sample of noise and measured on another)."""
    generator = torch.Generator().manual_seed(0)
    fitted, fresh = torch.randn(2, 20000, 48, generator=generator)
    rank = 12
    v = torch.linalg.svd(fitted, full_matrices=False).Vh[:rank]
    prediction = fresh @ v.T @ v
    assert float((fresh - prediction).pow(2).mean()) == pytest.approx(1 - rank / 48, abs=0.01)

"""The stored KL percentile table: 8-bit log codes within their bound, float16 tables of older
bundles still read."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from NeuroADLib.methods.kl_table import (  # noqa: E402
    CODES,
    LEVELS_KEY,
    PERCENTILES_FILE,
    decode_log8,
    encode_log8,
    load_percentiles,
    save_percentiles,
)


def percentile_like(levels: int = 3, shape=(4, 5, 6), seed: int = 0) -> torch.Tensor:
    """Positive values over about five decades per level, as CADD's KL percentiles span."""
    generator = torch.Generator().manual_seed(seed)
    return torch.exp(torch.rand((levels, *shape), generator=generator) * 11.5 - 13.0)


def test_codes_keep_every_value_within_half_a_step_of_its_logarithm():
    table = percentile_like()
    codes, log_range = encode_log8(table)
    assert codes.dtype == torch.uint8 and codes.shape == table.shape
    decoded = decode_log8(codes, log_range)
    for level in range(len(table)):
        low, high = table[level].log().min(), table[level].log().max()
        torch.testing.assert_close(log_range[level], torch.stack([low, high]))
        half_step = float(high - low) / CODES / 2
        error = (decoded[level].log() - table[level].log()).abs().max()
        assert error <= half_step + 1e-5
        # each level's extremes are exact (codes 0 and 255)
        assert decoded[level].min() == pytest.approx(float(table[level].min()), rel=1e-5)
        assert decoded[level].max() == pytest.approx(float(table[level].max()), rel=1e-5)
    assert math.exp(half_step) - 1 < 0.025  # about 2% relative error at these ranges


def test_a_saved_table_loads_as_it_was_decoded_and_zeros_stay_tiny(tmp_path):
    table = percentile_like()
    table[0, 0, 0, 0] = 0.0  # KL can be exactly zero
    levels = torch.tensor([50, 100, 150])
    save_percentiles({LEVELS_KEY: levels, "covariates": table, "none": table / 2}, tmp_path)
    loaded = load_percentiles(tmp_path)
    assert torch.equal(loaded[LEVELS_KEY], levels)
    assert set(loaded) == {LEVELS_KEY, "covariates", "none"}
    torch.testing.assert_close(loaded["covariates"], decode_log8(*encode_log8(table)))
    assert 0 < loaded["covariates"][0, 0, 0, 0] < 1e-11

    big = percentile_like(shape=(20, 20, 20))
    save_percentiles({LEVELS_KEY: levels, "covariates": big, "none": big}, tmp_path)
    size = (tmp_path / PERCENTILES_FILE).stat().st_size
    assert size < 2 * big.numel() * 1.05  # a byte a value (float16 took two)


def test_an_older_float16_table_still_loads_and_a_bundle_without_one_has_none(tmp_path):
    from safetensors.torch import save_file

    table = percentile_like().half()
    save_file({LEVELS_KEY: torch.tensor([50, 100, 150]), "covariates": table},
              str(tmp_path / PERCENTILES_FILE))
    loaded = load_percentiles(tmp_path)
    assert loaded["covariates"].dtype == torch.float32
    assert torch.equal(loaded["covariates"], table.float())
    assert load_percentiles(tmp_path / "elsewhere") == {}

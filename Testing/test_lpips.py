"""2.5D LPIPS: the missing-weights message, and the slicing against a direct computation."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from NeuroADLib.evaluation.lpips import (  # noqa: E402
    MetricUnavailable,
    lpips_2p5d,
    lpips_model,
)


def test_missing_backbone_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    import torch

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(MetricUnavailable, match="alexnet-owt-7be5be79.pth"):
        lpips_model("alex")


def test_2p5d_is_the_mean_over_axes_of_slice_means():
    from NeuroADLib.evaluation.lpips import _import_lpips

    try:
        _import_lpips()
    except MetricUnavailable as error:
        pytest.skip(str(error))
    import torch

    model = lpips_model("alex", random_backbone=True)  # plumbing only: random weights
    rng = np.random.default_rng(0)
    a = rng.random((40, 48, 56)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)
    assert lpips_2p5d(a, a, model) == pytest.approx(0.0, abs=1e-6)
    expected = []
    for axis in range(3):
        x, y = np.moveaxis(a, axis, 0), np.moveaxis(b, axis, 0)
        with torch.no_grad():
            values = [float(model(torch.from_numpy(s * 2 - 1)[None, None].repeat(1, 3, 1, 1),
                                  torch.from_numpy(t * 2 - 1)[None, None].repeat(1, 3, 1, 1)))
                      for s, t in zip(x, y, strict=True)]
        expected.append(np.mean(values))
    assert lpips_2p5d(a, b, model) == pytest.approx(float(np.mean(expected)), rel=1e-4)

"""A method's healthy calibration survives its compact storage."""

from __future__ import annotations

import numpy as np
import pytest

from NeuroADLib.methods.base import Calibration
from NeuroADLib.postprocessing import ReferenceStatistics


def test_calibration_round_trip_keeps_statistics_where_brains_were_seen(tmp_path):
    rng = np.random.default_rng(0)
    shape = (10, 12, 9)
    masks = [rng.random(shape) > 0.3 for _ in range(3)]
    maps = [rng.random(shape).astype(np.float32) for _ in range(3)]
    reference = ReferenceStatistics.from_healthy_maps(maps, masks, 0.05)
    Calibration(0.42, 0.01, reference).save(tmp_path, "calibration_x")

    loaded = Calibration.load(tmp_path, "calibration_x")
    covered = np.isfinite(reference.std)
    assert not covered.all()  # some voxels outside every mask: stored as "no evidence"
    assert np.array_equal(np.isfinite(loaded.reference.std), covered)
    assert np.allclose(loaded.reference.mean[covered], reference.mean[covered], rtol=1e-3,
                       atol=1e-3)
    assert np.allclose(loaded.reference.std[covered], reference.std[covered], rtol=1e-3,
                       atol=1e-7)
    assert loaded.threshold == 0.42 and loaded.fpr == 0.01
    assert loaded.reference.index_mean == pytest.approx(reference.index_mean)
    stored = (tmp_path / "calibration_x.safetensors").stat().st_size
    assert stored < 2 * 2 * covered.sum() + covered.size / 8 + 1024

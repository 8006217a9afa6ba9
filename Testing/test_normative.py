"""Normative map calibration: a method's map as a z-map against its own healthy maps."""

import json

import numpy as np
import pytest

from NeuroADLib.methods.base import Calibration, LoadedMethod
from NeuroADLib.postprocessing import (
    ReferenceStatistics,
    leave_one_out_normative_maps,
    normative_map,
    normative_threshold,
)


def _healthy(n=6, shape=(6, 7, 8), seed=0):
    rng = np.random.default_rng(seed)
    bias = np.linspace(0, 2, np.prod(shape)).reshape(shape)  # a systematic error by location
    maps = [(bias + rng.random(shape)).astype(np.float32) for _ in range(n)]
    masks = [np.ones(shape, bool) for _ in range(n)]
    return maps, masks


def test_normative_map_is_the_positive_z_inside_the_brain():
    maps, masks = _healthy()
    reference = ReferenceStatistics.from_healthy_maps(maps, masks)
    brain = masks[0].copy()
    brain[0] = False
    raw = maps[0] + 0.5
    expected = np.maximum((raw - reference.mean) / reference.std, 0) * brain
    np.testing.assert_allclose(normative_map(raw, reference, brain), expected, rtol=1e-5)


def test_leave_one_out_maps_use_the_other_subjects_only():
    maps, masks = _healthy()
    loo = leave_one_out_normative_maps(maps, masks)
    others = ReferenceStatistics.from_healthy_maps(maps[1:], masks[1:])
    np.testing.assert_allclose(loo[0], normative_map(maps[0], others, masks[0]), rtol=1e-6)
    with pytest.raises(ValueError, match="three"):
        leave_one_out_normative_maps(maps[:2], masks[:2])


def test_normative_maps_remove_a_systematic_error_by_location():
    """A map that is always high at one end of the brain: the raw threshold flags that end
    on a new healthy subject; the normative one flags about its false-positive rate
    anywhere."""
    maps, masks = _healthy(n=12)
    calibration = Calibration.from_healthy_maps(maps, masks, fpr=0.05)
    new = _healthy(n=1, seed=99)[0][0]
    raw_flagged = new > calibration.threshold
    normative = calibration.with_map("normative")
    norm_flagged = normative.output_map(new, masks[0]) > normative.output_threshold
    half = raw_flagged.size // 2
    assert raw_flagged.reshape(-1)[:half].sum() == 0 and raw_flagged.reshape(-1)[-50:].any()
    assert norm_flagged.reshape(-1)[:half].any() and norm_flagged.mean() < 0.15
    threshold, flagged = normative_threshold(maps, masks, 0.05,
                                             smoothing_sigma=calibration.smoothing_sigma)
    assert threshold == calibration.normative_threshold
    assert calibration.normative_flagged_range == [min(flagged), max(flagged)]


def test_calibration_with_normative_maps_round_trips(tmp_path):
    maps, masks = _healthy()
    calibration = Calibration.from_healthy_maps(maps, masks).with_map("normative")
    calibration.save(tmp_path, "c")
    loaded = Calibration.load(tmp_path, "c")
    assert loaded.map_kind == "normative"
    assert loaded.normative_threshold == calibration.normative_threshold
    assert loaded.output_threshold == calibration.normative_threshold
    with pytest.raises(ValueError, match="map kind"):
        calibration.with_map("logit")


class _Model:
    def predict(self, image, brain, subject, on_step=None):
        return image * brain, image * brain


def test_a_method_outputs_the_map_its_calibration_names():
    maps, masks = _healthy()
    calibration = Calibration.from_healthy_maps(maps, masks)
    image, brain = maps[0] + 1.0, masks[0]
    raw = LoadedMethod("m", "t1", _Model(), calibration).predict(image, brain)[0]
    np.testing.assert_array_equal(raw, image)
    normative = LoadedMethod("m", "t1", _Model(), calibration.with_map("normative"))
    np.testing.assert_allclose(normative.predict(image, brain)[0],
                               normative_map(image, calibration.reference, brain))


def test_the_chosen_map_is_recorded_and_the_bundle_still_verifies(tmp_path):
    from NeuroADLib.hashing import sha256
    from NeuroADLib.models.bundles import Bundle, verify_bundle
    from NeuroADLib.training.map_choice import choose_map

    maps, masks = _healthy()
    old = Calibration.from_healthy_maps(maps, masks)
    old.normative_threshold = old.normative_flagged_range = None  # an older calibration
    old.save(tmp_path, "calibration_m")
    files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256(p)}
             for p in tmp_path.iterdir()}
    (tmp_path / "manifest.json").write_text(json.dumps({"id": "m", "method": "m",
                                                        "files": files}))
    with pytest.raises(ValueError, match="healthy validation maps"):
        choose_map(tmp_path, "calibration_m", "normative", {})
    chosen = choose_map(tmp_path, "calibration_m", "normative", {"ap": 0.5}, maps, masks)
    assert chosen.map_kind == "normative"
    assert chosen.normative_threshold == normative_threshold(
        maps, masks, smoothing_sigma=old.smoothing_sigma)[0]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["map_choice"]["calibration_m"] == {"map": "normative", "figures": {"ap": 0.5}}
    verify_bundle(Bundle(tmp_path, manifest))
    with pytest.raises(ValueError, match="recalibrate"):  # figures at another smoothing
        choose_map(tmp_path, "calibration_m", "raw", {"ap": 0.4}, maps, masks,
                   smoothing_sigma=old.smoothing_sigma + 1)
    assert Calibration.load(tmp_path, "calibration_m").map_kind == "normative"


def test_smoothed_statistics_pool_the_variance_of_a_neighbourhood():
    """Variance smoothing (SnPM's pseudo-t): the mean stays each voxel's own; the variance is
    G * (summed squared deviations) / G * (covering count), which a closed form gives where
    every voxel's deviations are alike, and which tames the voxels where a few subjects
    happened to agree."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(3)
    shape = (9, 10, 11)
    signs = rng.choice([-1.0, 1.0], size=(5, *shape))
    spread = np.array([0.0, 0.5, 1.0, 1.5, 2.0])[:, None, None, None]
    maps = [m for m in 3.0 + signs * spread]  # every voxel: the same |deviations|
    masks = [np.ones(shape, bool)] * 5
    smoothed = ReferenceStatistics.from_healthy_maps(maps, masks, smoothing_sigma=1.5)
    plain = ReferenceStatistics.from_healthy_maps(maps, masks)
    np.testing.assert_allclose(smoothed.mean, plain.mean)
    squares = ((np.stack(maps) - plain.mean) ** 2).sum(axis=0)
    expected = np.sqrt(gaussian_filter(squares, 1.5, mode="constant")
                       / gaussian_filter(np.full(shape, 5.0), 1.5, mode="constant"))
    np.testing.assert_allclose(smoothed.std, expected, rtol=1e-6)

    noisy = [rng.normal(size=shape) for _ in range(5)]
    new = rng.normal(size=shape)
    z = {sigma: normative_map(new, ReferenceStatistics.from_healthy_maps(
        noisy, masks, smoothing_sigma=sigma), masks[0]).max() for sigma in (0.0, 2.0)}
    assert z[2.0] < z[0.0] / 2  # five subjects' std of a voxel can be near 0; pooled it is not


def test_calibrations_record_their_smoothing(tmp_path):
    maps, masks = _healthy()
    calibration = Calibration.from_healthy_maps(maps, masks, smoothing_sigma=1.0)
    np.testing.assert_allclose(
        calibration.reference.std,
        ReferenceStatistics.from_healthy_maps(maps, masks, smoothing_sigma=1.0).std)
    calibration.save(tmp_path, "c")
    assert Calibration.load(tmp_path, "c").smoothing_sigma == 1.0
    meta = json.loads((tmp_path / "c.json").read_text())
    del meta["smoothing_sigma"]  # a calibration made before smoothing
    (tmp_path / "c.json").write_text(json.dumps(meta))
    assert Calibration.load(tmp_path, "c").smoothing_sigma == 0.0

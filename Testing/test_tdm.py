"""TDM: the cohort's age trend against numpy's polynomial fit, the pseudo-longitudinal pairs,
the summing UNet's conditions, a tiny bundle trained, verified, resumed and sampled
reproducibly, the imputation plan of the longitudinal method, and `neuroad impute` end to end."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import numpy as np
import pytest
from conftest import IXI_SCAN, TINY_CADD_SHAPE, _quiet, ellipsoid_brain, fabricated_cohort, require

from NeuroADLib.errors import EXIT_BAD_INPUT, EXIT_USAGE
from NeuroADLib.longitudinal import imputation_plan
from NeuroADLib.methods.registry import TDM_OPTIONS
from NeuroADLib.synthesis.aging import DECADE, AgeTrend

torch = pytest.importorskip("torch")


def _quadratic_cohort(ages: np.ndarray, shape=(4, 6, 5), seed=0):
    """Volumes exactly quadratic in age at every voxel, with known coefficients."""
    rng = np.random.default_rng(seed)
    b0, b1, b2 = rng.random(shape), rng.normal(0, 0.05, shape), rng.normal(0, 0.01, shape)
    centred = (ages - ages.mean()) / DECADE
    return [b0 + b1 * c + b2 * c * c for c in centred], (b1, b2)


def test_age_trend_matches_numpy_polyfit_per_voxel():
    ages = np.array([22.0, 30.5, 41.0, 47.0, 58.0, 66.0, 73.0, 80.0])
    rng = np.random.default_rng(3)
    images = [rng.random((3, 4, 5)) for _ in ages]
    trend = AgeTrend.fit(images, list(ages), smoothing_voxels=0.0)
    centred = (ages - ages.mean()) / DECADE
    values = np.stack(images).reshape(len(ages), -1)
    quadratic, linear, _ = np.polyfit(centred, values, 2)
    np.testing.assert_allclose(trend.linear.ravel(), linear, atol=1e-5)
    np.testing.assert_allclose(trend.quadratic.ravel(), quadratic, atol=1e-5)


def test_follow_up_of_an_exactly_quadratic_cohort_is_the_older_subject():
    ages = np.array([20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0])
    images, _ = _quadratic_cohort(ages)
    trend = AgeTrend.fit(images, list(ages), smoothing_voxels=0.0)
    brain = np.ones(images[0].shape, bool)
    # the subject aged 40 followed up 20 years is the subject aged 60
    np.testing.assert_allclose(trend.follow_up(images[2], brain, 40.0, 20.0), images[4],
                               atol=1e-5)
    np.testing.assert_allclose(trend.change(40.0, 0.0), 0.0)
    outside = np.zeros(images[0].shape, bool)
    np.testing.assert_array_equal(trend.follow_up(images[2], outside, 40.0, 20.0),
                                  images[2].astype(np.float32))
    with pytest.raises(ValueError, match="at least 4 scans"):
        AgeTrend.fit(images[:3], list(ages[:3]))


def test_training_pairs_are_the_trend_inside_the_brain_at_a_rate_in_range():
    from NeuroADLib.training.slice_data import SliceSet
    from NeuroADLib.training.tdm import TDMTraining, TemporalPairs

    shape = (6, 8, 8)
    ages = np.array([25.0, 35.0, 45.0, 55.0, 65.0, 75.0])
    images, _ = _quadratic_cohort(ages, shape)
    brain = ellipsoid_brain(shape)
    trend = AgeTrend.fit(images, list(ages), smoothing_voxels=0.0)
    pairs = np.array([(k, z) for k in range(len(images)) for z in range(2, 4)])
    slices = SliceSet([(i * brain).astype(np.float32) for i in images], [brain] * len(images),
                      pairs,
                      [*ages[:-1], None])
    training = TDMTraining(batch_size=32, max_gap=4.0, rates=(0.5, 1.5))
    batch = TemporalPairs(slices, trend, 0.01, training).batch(np.random.default_rng(0))
    baseline, residual, batch_ages, gaps = batch
    assert baseline.shape == residual.shape == (32, 1, 8, 8)
    assert 75.0 not in batch_ages.tolist()  # the undated scan is never a baseline
    assert ((gaps >= 0) & (gaps <= 4.0)).all()
    assert torch.all(residual[baseline == 0] == 0)  # nothing changes outside the brain
    largest = max(np.abs(trend.change(a, g)).max()
                  for a, g in zip(batch_ages.tolist(), gaps.tolist(), strict=True))
    assert float(residual.abs().max()) * 0.01 <= 1.5 * largest + 1e-6


def test_the_temporal_network_reads_age_gap_and_baseline():
    from NeuroADLib.networks.conditioned_unet import TemporalNetwork
    from NeuroADLib.training.tdm import TDM_CONFIGS

    torch.manual_seed(0)
    network = TemporalNetwork(TDM_CONFIGS["tiny"]).eval()
    residual, baseline = torch.randn(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    t, age, gap = torch.tensor([10, 500]), torch.tensor([40.0, 60.0]), torch.tensor([1.0, 3.0])
    with torch.no_grad():
        out = network(residual, t, baseline, age, gap)
        assert out.shape == residual.shape
        assert not torch.allclose(out, network(residual, t, baseline, age + 20, gap))
        assert not torch.allclose(out, network(residual, t, baseline, age, gap + 2))
        assert not torch.allclose(out, network(residual, t, baseline.flip(-1), age, gap))
    with pytest.raises(ValueError, match="two images"):
        TemporalNetwork(replace(TDM_CONFIGS["tiny"], in_channels=1))


def test_tdm_options_match_its_settings():
    from NeuroADLib.methods.tdm import TDMSettings

    assert asdict(TDMSettings()) == TDM_OPTIONS


def _tiny_training():
    from NeuroADLib.methods.tdm import TDMSettings
    from NeuroADLib.training.tdm import TDMTraining

    return TDMTraining(config="tiny", steps=2, batch_size=4, acquisition_copies=0,
                       checkpoint_every=1, log_every=1, evaluation_gaps=(2.0,),
                       evaluation_subjects=1, inference=TDMSettings(steps=2))


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    from NeuroADLib.training.tdm import train_tdm

    root = tmp_path_factory.mktemp("tdm")
    cohort = fabricated_cohort(root / "cohort", TINY_CADD_SHAPE, 8)
    return cohort, train_tdm(cohort, root / "tdm", _tiny_training(), log=_quiet)


def test_tiny_bundle_verifies_and_records_its_pairs_and_imputation_errors(tiny_bundle):
    from NeuroADLib.models.bundles import Bundle, verify_bundle

    _, bundle = tiny_bundle
    manifest = json.loads((bundle / "manifest.json").read_text())
    verify_bundle(Bundle(bundle, manifest))
    assert manifest["method"] == "tdm"
    assert "pseudo-longitudinal" in manifest["training_data"]["pairs"]
    figures = manifest["metrics"]["imputation"]["2"]
    assert set(figures) == {"tdm", "copy_last_visit", "mae_removed"}
    assert figures["copy_last_visit"]["mae"] >= 0
    network = json.loads((bundle / "network" / "manifest.json").read_text())
    assert network["residual_scale"] > 0
    assert network["config"]["conditioning"] == "sum"


def test_imputation_is_reproducible_and_changes_only_the_brain(tiny_bundle):
    from NeuroADLib.methods.tdm import load_tdm

    _, bundle = tiny_bundle
    image = np.random.default_rng(0).random(TINY_CADD_SHAPE).astype(np.float32)
    brain = ellipsoid_brain(TINY_CADD_SHAPE)
    image *= brain
    model = load_tdm(bundle)
    first = model.impute(image, brain, 50.0, 53.0)
    np.testing.assert_array_equal(first, load_tdm(bundle).impute(image, brain, 50.0, 53.0))
    other = load_tdm(bundle, {"seed": 7}).impute(image, brain, 50.0, 53.0)
    assert not np.array_equal(first, other)
    np.testing.assert_array_equal(first[~brain], image[~brain])
    assert np.isfinite(first).all()
    with pytest.raises(ValueError, match="forward in time"):
        model.impute(image, brain, 50.0, 49.0)


def test_resumed_training_equals_uninterrupted(tiny_bundle, tmp_path):
    from NeuroADLib.models.weights import load_weights
    from NeuroADLib.training.tdm import train_tdm

    cohort, whole = tiny_bundle
    longer = replace(_tiny_training(), steps=4)
    train_tdm(cohort, tmp_path / "parts", _tiny_training(), log=_quiet)
    parts = train_tdm(cohort, tmp_path / "parts", longer, log=_quiet)
    direct = train_tdm(cohort, tmp_path / "direct", longer, log=_quiet)
    a, b = (load_weights(folder / "network", "tdm") for folder in (parts, direct))
    assert all(torch.equal(a[k], b[k]) for k in a)
    shorter = load_weights(whole / "network", "tdm")
    assert not all(torch.equal(shorter[k], b[k]) for k in b)


@pytest.mark.parametrize("times, every, plan", [
    ([60.0, 62.0], 1.0, [(61.0, 0)]),
    ([60.0, 61.5], 1.0, [(61.0, 0)]),
    ([60.0, 61.2], 1.0, []),
    ([60.0, 63.0, 64.0], 1.0, [(61.0, 0), (62.0, 0)]),
    ([60.0, 62.0], 0.0, []),
    ([60.0], 1.0, []),
])
def test_imputation_plan_fills_gaps_longer_than_its_spacing(times, every, plan):
    assert imputation_plan(times, every) == plan


def neuroad(*args: str, env: dict | None = None):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "NeuroADLib", *args], capture_output=True,
                          text=True, timeout=900, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("args, code, message", [
    (["--age", "60", "--to-age", "59"], EXIT_BAD_INPUT, "not after the scan's age"),
    (["--age", "60", "--to-age", "130"], EXIT_BAD_INPUT, "0-120"),
    (["--age", "60", "--to-age", "62", "--option", "tdm.steps=0"], EXIT_USAGE, "tdm.steps"),
    (["--age", "60", "--to-age", "62", "--option", "cadd.t_int=5"], EXIT_USAGE, "TDM's options"),
])
def test_bad_imputation_requests_are_refused_before_any_work(tmp_path, args, code, message):
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(b"not read")
    result = neuroad("impute", str(scan), "--sex", "F", "--out", str(tmp_path / "out"), *args)
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_impute_writes_the_follow_up_on_the_scan_and_longitudinal_fuses_it(tmp_path):
    """`neuroad impute` through a tiny TDM trained on the product grid, then the longitudinal
    method with impute_every filling a two-year gap with an imputed visit."""
    import SimpleITK as sitk
    from conftest import tiny_grid_sdm_store

    from NeuroADLib.grid import GridSpec
    from NeuroADLib.training.tdm import train_tdm
    from NeuroADLib.volumes import read_volume, same_geometry

    scan = require(IXI_SCAN)
    store = tiny_grid_sdm_store(tmp_path)
    cohort = fabricated_cohort(tmp_path / "grid_cohort", GridSpec().shape[::-1], 8)
    train_tdm(cohort, store / "tdm", replace(_tiny_training(), steps=1, evaluation_subjects=0),
              log=_quiet)
    before = scan.read_bytes()
    out = tmp_path / "imputed"
    result = neuroad("impute", str(scan), "--age", "38.8", "--to-age", "41", "--sex", "M",
                     "--out", str(out), "--threads", "2", "--option", "tdm.steps=2",
                     env={"NEUROAD_MODELS": str(store)})
    assert result.returncode == 0, result.stderr
    assert scan.read_bytes() == before
    assert {p.name for p in out.iterdir()} == {"imputed.nii.gz", "change.nii.gz",
                                               "report.json"}
    native = read_volume(scan)
    imputed = sitk.ReadImage(str(out / "imputed.nii.gz"))
    assert same_geometry(imputed, native, tolerance=1e-4)
    report = json.loads((out / "report.json").read_text())
    assert report["imputed_age"] == 41 and report["settings"]["steps"] == 2
    change = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "change.nii.gz")))
    np.testing.assert_allclose(sitk.GetArrayFromImage(imputed),
                               sitk.GetArrayFromImage(native).astype(np.float32) + change,
                               rtol=1e-5, atol=1e-3)

    runs = tmp_path / "visits"
    result = neuroad("run", str(scan), str(scan), "--age", "38.8", "40.8", "--sex", "M",
                     "--method", "longitudinal", "--out", str(runs), "--threads", "2",
                     "--option", "longitudinal.impute_every=1",
                     env={"NEUROAD_MODELS": str(store)})
    assert result.returncode == 0, result.stderr
    visit = json.loads((runs / "visit2" / "report.json").read_text())["longitudinal"]
    assert visit["imputation"]["applied"] is True
    assert visit["imputation"]["visits"] == [{"age": pytest.approx(39.8),
                                              "imputed_from_age": 38.8,
                                              "on_the_grid_of_visit": 1}]
    assert json.loads((runs / "visits.json").read_text())["imputed_ages"] == [
        pytest.approx(39.8)]
    assert sorted(p.name for p in runs.iterdir()) == ["summary.png", "visit1", "visit2",
                                                      "visits.json"]


def test_an_imputed_visit_joins_lafm_as_a_reference_only():
    """fuse_visits with an imputed reference: each real visit's map is LAFM over the real
    visits and the reference (eq. 3.7-3.8), and only real visits come out."""
    from types import SimpleNamespace

    from NeuroADLib.longitudinal import ImputedVisit, fuse_visits
    from NeuroADLib.methods.sdm import SDMScores, SDMSettings
    from NeuroADLib.postprocessing import filtered_in_eroded_brain
    from NeuroADLib.postprocessing.temporal import lafm

    settings = SDMSettings(median_size=1, erosion=0)
    model = SimpleNamespace(settings=settings, postprocess=lambda v, b: filtered_in_eroded_brain(
        v, b, settings.median_size, settings.erosion))
    shape = (6, 8, 8)
    brain = ellipsoid_brain(shape)
    rng = np.random.default_rng(1)
    first, last, middle = (rng.random(shape).astype(np.float32) * brain for _ in range(3))
    reference = ImputedVisit(61.0, 60.0, 0, SDMScores(middle, middle, middle))
    import SimpleITK as sitk

    grid = sitk.GetImageFromArray(first)
    fused = fuse_visits([first, last], [first, last], [brain, brain], [60.0, 62.0], model,
                        [grid, grid], [None, sitk.Euler3DTransform()], references=[reference])
    expected = lafm([first, last, middle], [60.0, 62.0, 61.0], brain, settings.lafm())
    assert len(fused.anomaly) == len(fused.segmentation.masks) == 2
    for k in range(2):
        np.testing.assert_allclose(fused.anomaly[k], model.postprocess(expected[k], brain),
                                   atol=1e-6)
    alone = fuse_visits([first], [first], [brain], [60.0], model, references=[reference])
    assert alone.lafm_applied


def test_missing_visit_benchmark_runs_three_scenarios(tiny_bundle, tmp_path):
    from conftest import tiny_sdm_bundle

    from NeuroADLib.evaluation.longitudinal import (
        MISSING_SCENARIOS,
        ProgressionConfig,
        build_longitudinal_set,
        evaluate_missing_visit,
    )
    from NeuroADLib.synthesis import SynthesisConfig

    cohort, tdm = tiny_bundle
    _, sdm = tiny_sdm_bundle(tmp_path)
    config = ProgressionConfig(growth=(0.4, 0.7, 1.0), synthesis=SynthesisConfig(
        perlin_radius_voxels=(3.0, 4.0), margin_voxels=2, min_lesion_voxels=5))
    manifest = build_longitudinal_set(cohort, tmp_path / "visits", config)
    summary = evaluate_missing_visit(sdm, tdm, manifest, tmp_path / "evaluation", log=_quiet)
    assert set(summary) == set(MISSING_SCENARIOS)
    for scenario in MISSING_SCENARIOS:
        for visit in ("1", "3"):
            assert 0.0 <= summary[scenario][visit]["ap"] <= 1.0
            assert 0.0 <= summary[scenario][visit]["healthy_yen_fpr"] <= 1.0
    assert (tmp_path / "evaluation" / "missing_visit_metrics.csv").is_file()

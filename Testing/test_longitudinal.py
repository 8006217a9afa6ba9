"""The longitudinal method: LAFM (eq. 3.7-3.8) against its closed form, the per-patient Yen
segmentation (eq. 3.9) against scikit-image, visit alignment against a known rigid motion,
SDM's DDIM inversion, and `neuroad run V1 V2 --method longitudinal` end to end."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from dataclasses import asdict, replace

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import IXI_SCAN, _quiet, ellipsoid_brain, healthy_volume, require
from skimage.filters import threshold_yen

from NeuroADLib.errors import EXIT_BAD_INPUT, EXIT_USAGE
from NeuroADLib.methods.registry import LONGITUDINAL_OPTIONS, validate_options
from NeuroADLib.postprocessing.temporal import (
    LAFMSettings,
    lafm,
    min_max,
    visit_weights,
    yen_segmentation,
)

SHAPE = (12, 16, 16)


def _maps(seed: int, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random(SHAPE).astype(np.float32) for _ in range(count)]


def test_visit_weights_are_gaussian_in_visit_time():
    weights = visit_weights([60.0, 61.0, 63.0], target=0, sigma=2.0)
    assert np.allclose(weights, [np.exp(-1 / 8), np.exp(-9 / 8)])
    assert np.array_equal(visit_weights([60.0, 61.0, 63.0], 1, sigma=0.0), [1.0, 1.0])


def test_lafm_matches_its_closed_form():
    brain = ellipsoid_brain(SHAPE)
    s = _maps(0, 3)
    times = [50.0, 51.0, 53.5]
    settings = LAFMSettings(sigma=1.5, beta=0.7, gamma=0.2)
    fused = lafm(s, times, brain, settings)
    for target in range(3):
        others = [k for k in range(3) if k != target]
        w = np.array([np.exp(-(times[k] - times[target]) ** 2 / (2 * 1.5**2)) for k in others])
        reference = sum(wk * s[k] for wk, k in zip(w, others, strict=True)) / w.sum()
        values = reference[brain]
        norm = np.where(brain, (reference - values.min()) / (values.max() - values.min()), 0)
        expected = (s[target] * (1 - 0.7 * (1 - norm)) + 0.2 * reference) * brain
        assert np.allclose(fused[target], expected, atol=1e-6)


def test_lafm_damps_what_one_visit_alone_shows_and_keeps_what_persists():
    brain = np.ones(SHAPE, bool)
    base = [np.full(SHAPE, 0.1, np.float32) for _ in range(3)]
    for s in base:
        s[4:7, 4:7, 4:7] = 1.0  # a lesion every visit shows
    base[1][8:10, 10:12, 10:12] = 1.0  # a spot only visit 2 shows
    fused = lafm(base, [60.0, 61.0, 62.0], brain)
    assert fused[1][5, 5, 5] > 0.9 * base[1][5, 5, 5]
    assert fused[1][9, 11, 11] < 0.2 * base[1][9, 11, 11]


def test_one_visit_is_not_fused():
    s = _maps(1, 1)
    assert np.array_equal(lafm(s, [40.0], np.ones(SHAPE, bool))[0], s[0])
    with pytest.raises(ValueError, match="visit times"):
        lafm(s, [40.0, 41.0], np.ones(SHAPE, bool))


def test_min_max_is_zero_for_a_constant_map():
    assert not min_max(np.full(SHAPE, 3.0), np.ones(SHAPE, bool)).any()


def test_yen_segmentation_follows_eq_3_9():
    brains = [ellipsoid_brain(SHAPE)] * 2
    scores, pixels = _maps(2, 2), _maps(3, 2)
    for s in scores:
        s[5:8, 6:10, 6:10] += 2.0
    result = yen_segmentation(scores, pixels, brains)
    pooled = np.concatenate([s[b] for s, b in zip(scores, brains, strict=True)])
    normalised = [(s - pooled.min()) / (pooled.max() - pooled.min()) for s in scores]
    expected_score = threshold_yen(np.concatenate([n[b] for n, b in zip(normalised, brains,
                                                                        strict=True)]))
    assert result.score_threshold == pytest.approx(expected_score)
    m = [(n >= expected_score) & b for n, b in zip(normalised, brains, strict=True)]
    expected_pixel = threshold_yen(np.concatenate([p[k] for p, k in zip(pixels, m,
                                                                        strict=True)]))
    assert result.pixel_threshold == pytest.approx(expected_pixel)
    assert result.raw_score_threshold == pytest.approx(
        pooled.min() + expected_score * (pooled.max() - pooled.min()))
    for mask, flagged, p in zip(result.masks, m, pixels, strict=True):
        assert np.array_equal(mask, flagged & (p >= expected_pixel))
    assert result.masks[0][6, 8, 8] or result.masks[1][6, 8, 8]


def test_follow_ups_are_aligned_to_the_first_visit():
    from NeuroADLib.preprocessing.visits import from_first, into_first, rigid_to_first

    shape = (40, 48, 40)
    array = healthy_volume(shape, 0)
    first = sitk.GetImageFromArray(array)
    first.SetSpacing((2.0, 2.0, 2.0))
    centre = first.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in
                                                            first.GetSize()])
    motion = sitk.Euler3DTransform()
    motion.SetCenter(centre)
    motion.SetRotation(0.04, -0.03, 0.05)
    motion.SetTranslation((2.0, -1.5, 1.0))
    follow_up = sitk.Resample(first, first, motion, sitk.sitkLinear, 0.0)
    found = rigid_to_first(first, ellipsoid_brain(shape), follow_up)
    # follow_up(p) = first(motion(p)), so the follow-up's point of the first's p is motion^-1(p)
    for point in ([10.0, 20.0, 30.0], [60.0, 50.0, 40.0], [30.0, 70.0, 20.0]):
        there = motion.TransformPoint(found.TransformPoint(point))
        assert np.allclose(there, point, atol=0.3)
    brain = ellipsoid_brain(shape) & (np.indices(shape)[0] > 8) & (np.indices(shape)[0] < 32)
    moved_back = into_first(sitk.GetArrayFromImage(follow_up), follow_up, found)
    before = np.abs(sitk.GetArrayFromImage(follow_up) - array)[brain].mean()
    assert np.abs(moved_back - array)[brain].mean() < 0.5 * before
    there_and_back = from_first(into_first(array, first, found), first, found)
    assert np.abs(there_and_back - array)[brain].mean() < 0.5 * before


def test_sdm_inversion_then_decoding_returns_the_slice_with_an_exact_model():
    """With a network that predicts the true noise of x_t (an oracle for one clean slice),
    DDIM inversion to t and decoding back are exact: the pseudo-healthy slice is the slice."""
    torch = pytest.importorskip("torch")
    from NeuroADLib.diffusion.process import DiffusionProcess
    from NeuroADLib.methods.image_ddpm import SliceNoise, to_network
    from NeuroADLib.methods.sdm import SDMModel, SDMSettings, sdm_diffusion

    process = DiffusionProcess(sdm_diffusion())
    x0 = torch.rand(2, 1, 8, 8)

    class Oracle(torch.nn.Module):
        config = None

        def unet(self, z, t, code):  # eps = (z - sqrt(abar) x) / sqrt(1 - abar)
            abar = process.alpha_bar(t, z)
            return (z - abar.sqrt() * to_network(x0)) / (1 - abar).sqrt()

    model = SDMModel(Oracle(), process, SDMSettings(noise_level=250, steps=5))
    model.network.encoder = lambda x: x
    x_hat = model.reconstruct(x0, np.arange(2), SliceNoise(0))
    assert torch.allclose(x_hat, x0, atol=1e-5)


def test_longitudinal_options_match_the_settings():
    from NeuroADLib.methods.sdm import SDMSettings

    settings = asdict(SDMSettings())
    assert {k: settings[k] for k in LONGITUDINAL_OPTIONS} == LONGITUDINAL_OPTIONS
    assert set(settings) - set(LONGITUDINAL_OPTIONS) == {"encoding"}
    with pytest.raises(ValueError, match="at most one DDIM step per noise level"):
        validate_options("sdm", {"steps": 300})
    with pytest.raises(ValueError, match="lafm_beta"):
        validate_options("longitudinal", {"lafm_beta": 2})


def neuroad(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "NeuroADLib", *args], capture_output=True,
                          text=True, timeout=900, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("args, code, message", [
    (["a.nii.gz", "b.nii.gz", "--age", "40", "41", "--method", "zscore"], EXIT_USAGE,
     "need a longitudinal method"),
    (["a.nii.gz", "--age", "40", "--method", "longitudinal", "--method", "zscore"],
     EXIT_USAGE, "runs alone"),
    (["a.nii.gz", "b.nii.gz", "--age", "40", "--method", "longitudinal"], EXIT_BAD_INPUT,
     "one age per visit"),
    (["a.nii.gz", "b.nii.gz", "--age", "41", "40", "--method", "longitudinal"],
     EXIT_BAD_INPUT, "go down"),
    (["a.nii.gz", "b.nii.gz", "--age", "40", "41", "--brain-mask", "m.nii.gz", "--method",
      "longitudinal"], EXIT_USAGE, "one brain mask per scan"),
])
def test_bad_visit_lists_are_refused(tmp_path, args, code, message):
    result = neuroad("run", *args, "--sex", "F", "--out", str(tmp_path / "out"))
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "out").exists()


def test_batch_groups_rows_into_patients_and_runs_longitudinal_alone(tmp_path):
    from NeuroADLib.batch import patients, read_case_table, run_batch
    from NeuroADLib.errors import CaseTableError, UsageError

    table = tmp_path / "cases.csv"
    table.write_text("path,age,sex,subject\na.nii.gz,60,F,P1\nb.nii.gz,55,M,\n"
                     "c.nii.gz,61,F,P1\n")
    groups = patients(read_case_table(table))
    assert [(name, [r["case"] for r in rows]) for name, rows in groups] == [
        ("P1", ["a", "c"]), ("b", ["b"])]
    with pytest.raises(UsageError, match="alone"):
        run_batch(table, ["longitudinal", "zscore"], tmp_path / "out")
    table.write_text("path,age,sex,subject\na.nii.gz,60,F,../up\n")
    with pytest.raises(CaseTableError, match="plain folder name"):
        patients(read_case_table(table))


@pytest.mark.parametrize("request_, message", [
    ({"visits": [], "sex": "F", "methods": ["longitudinal"], "out": "o"}, "non-empty list"),
    ({"visits": [{"input": "a"}], "sex": "F", "methods": ["longitudinal"], "out": "o"},
     "lacks 'age'"),
    ({"visits": [{"input": "a", "age": "x"}], "sex": "F", "methods": ["longitudinal"],
      "out": "o"}, "number of years"),
    ({"visits": [{"input": "a", "age": 50}], "sex": "F", "methods": ["zscore"], "out": "o"},
     "one longitudinal method"),
])
def test_worker_refuses_malformed_visit_requests(request_, message):
    from NeuroADLib.errors import UsageError
    from NeuroADLib.worker import check_request

    with pytest.raises(UsageError, match=message):
        check_request(request_)
    check_request({"visits": [{"input": "a", "age": 50}, {"input": "b", "age": 51.5}],
                   "sex": "F", "methods": ["longitudinal"], "out": "o"})


def _template_to_native(report: dict) -> sitk.AffineTransform:
    """The template -> native affine a run's report.json records for its preprocessing."""
    matrix = np.array(report["preprocessing"]["template_to_native_lps"])
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(matrix[:3, :3].ravel().tolist())
    affine.SetTranslation(matrix[:3, 3].tolist())
    return affine


def _visit_alignment_error_mm(first_report: dict, follow_up_report: dict,
                              motion: sitk.Transform) -> float:
    """Mean distance (mm), over the grid's template brain voxels, between where the run's
    alignment puts a grid point in the follow-up scan (visit 2's template-to-native affine
    after the grid-level rigid) and where the simulated head motion moved that anatomy. Read
    from the two visits' reports, so the scans are not preprocessed again."""
    from NeuroADLib.grid import GridSpec
    from NeuroADLib.templates import template_brain_mask

    grid = GridSpec.from_dict(first_report["preprocessing"]["grid"])
    reference = grid.reference_image()
    first = _template_to_native(first_report)
    follow_up = _template_to_native(follow_up_report)
    rigid = sitk.Euler3DTransform()
    rigid.SetCenter(reference.TransformContinuousIndexToPhysicalPoint(
        [(n - 1) / 2.0 for n in reference.GetSize()]))
    rigid.SetParameters(follow_up_report["longitudinal"]["aligned_to_visit1"])
    unmoved = motion.GetInverse()  # native point -> the same anatomy in the re-scan
    brain = np.argwhere(sitk.GetArrayFromImage(template_brain_mask(grid)) > 0)[::997]
    errors = []
    for z, y, x in brain:
        point = reference.TransformIndexToPhysicalPoint((int(x), int(y), int(z)))
        expected = unmoved.TransformPoint(first.TransformPoint(point))
        found = follow_up.TransformPoint(rigid.TransformPoint(point))
        errors.append(np.linalg.norm(np.subtract(found, expected)))
    return float(np.mean(errors))


@pytest.mark.slow
def test_longitudinal_run_writes_every_visit_on_its_own_geometry(tmp_path):
    """Two visits (a real scan and the same head moved and re-scanned) through a tiny SDM
    bundle trained on the product grid: visit folders, LAFM applied, Yen masks, geometry."""
    pytest.importorskip("torch")
    from conftest import tiny_grid_sdm_store

    from NeuroADLib.volumes import read_volume, same_geometry

    scan = require(IXI_SCAN)
    store = tiny_grid_sdm_store(tmp_path)
    native = read_volume(scan)
    motion = sitk.Euler3DTransform()
    motion.SetCenter(native.TransformContinuousIndexToPhysicalPoint(
        [(n - 1) / 2 for n in native.GetSize()]))
    motion.SetRotation(0.03, 0.0, -0.02)
    motion.SetTranslation((3.0, -2.0, 1.0))
    second = tmp_path / "visit2.nii.gz"
    sitk.WriteImage(sitk.Resample(native, native, motion, sitk.sitkLinear, 0.0), str(second))
    before = scan.read_bytes()

    out = tmp_path / "out"
    result = neuroad("run", str(scan), str(second), "--age", "38.8", "40.1", "--sex", "M",
                     "--method", "longitudinal", "--out", str(out), "--threads", "2",
                     env={"NEUROAD_MODELS": str(store)})
    assert result.returncode == 0, result.stderr
    assert {p.name for p in out.iterdir()} == {"visit1", "visit2", "summary.png", "visits.json"}
    assert scan.read_bytes() == before
    for number, source in ((1, scan), (2, second)):
        folder = out / f"visit{number}"
        report = json.loads((folder / "report.json").read_text())
        assert report["longitudinal"]["lafm"]["applied"] is True
        assert report["longitudinal"]["visit"] == number
        scores = report["longitudinal"]["image_scores"]
        assert scores["max"] >= scores["quantile_99_mean"] >= scores["mean"] >= 0
        assert report["threshold"]["rule"].startswith("Yen")
        assert "calibrated" in report["threshold"]
        for name in ("anomaly_map.nii.gz", "anomaly_mask.nii.gz", "pseudo_healthy.nii.gz"):
            assert same_geometry(sitk.ReadImage(str(folder / name)), read_volume(source),
                                 tolerance=1e-4)
    first_report, follow_up_report = (json.loads((out / f"visit{k}" / "report.json").read_text())
                                      for k in (1, 2))
    assert _visit_alignment_error_mm(first_report, follow_up_report, motion) < 1.0

    # The abnormality index is over the visit's own SDM + FAM map, which LAFM leaves alone: the
    # first visit's index is that of the same scan run as a single visit, its fused map not.
    alone = neuroad("run", str(scan), "--age", "38.8", "--sex", "M", "--method", "longitudinal",
                    "--out", str(tmp_path / "alone"), "--threads", "2",
                    env={"NEUROAD_MODELS": str(store)})
    assert alone.returncode == 0, alone.stderr
    single = json.loads((tmp_path / "alone" / "visit1" / "report.json").read_text())
    assert single["longitudinal"]["lafm"]["applied"] is False
    assert first_report["abnormality_index"] == pytest.approx(single["abnormality_index"],
                                                              rel=1e-6)
    assert (first_report["longitudinal"]["image_scores"]
            != single["longitudinal"]["image_scores"])

    # The same patient from a batch table: a subject column groups the rows into visits.
    table = tmp_path / "cases.csv"
    table.write_text(f"path,age,sex,subject\n{scan},38.8,M,P1\n{second},40.1,M,P1\n")
    batch = neuroad("batch", str(table), "--method", "longitudinal", "--out",
                    str(tmp_path / "batch"), "--quiet",
                    env={"NEUROAD_MODELS": str(store)})
    assert batch.returncode == 0, batch.stderr
    rows = list(csv.DictReader((tmp_path / "batch" / "summary.csv").open()))
    assert [r["status"] for r in rows] == ["ok", "ok"]
    for number in (1, 2):
        assert (tmp_path / "batch" / "P1" / f"visit{number}" / "report.json").is_file()


def test_growing_lesions_grow_and_change_only_their_voxels():
    from NeuroADLib.evaluation.longitudinal import ProgressionConfig, growing_lesions
    from NeuroADLib.synthesis import SynthesisConfig

    shape = (32, 32, 32)
    image, brain = healthy_volume(shape, 0), ellipsoid_brain(shape)
    config = ProgressionConfig(growth=(0.4, 0.7, 1.0), lesions=(2, 2),
                               synthesis=SynthesisConfig(perlin_radius_voxels=(4.0, 5.0),
                                                         margin_voxels=2))
    visits = growing_lesions(image, brain, seed=3, config=config)
    sizes = [int(mask.sum()) for _, mask in visits]
    assert sizes[0] >= config.synthesis.min_lesion_voxels
    assert sizes[0] <= sizes[1] <= sizes[2] and sizes[0] < sizes[2]
    assert all((visits[k][1] <= visits[k + 1][1]).all() for k in range(2))  # nested
    for lesioned, mask in visits:
        assert np.array_equal(lesioned[~mask], image[~mask])
        assert lesioned[mask].mean() < image[mask].mean()  # hypo-intense on T1
    again = growing_lesions(image, brain, seed=3, config=config)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(visits, again, strict=True))


def test_longitudinal_benchmark_builds_and_evaluates(tmp_path):
    pytest.importorskip("torch")
    from conftest import tiny_sdm_bundle

    from NeuroADLib.evaluation.longitudinal import (
        VARIANTS,
        ProgressionConfig,
        build_longitudinal_set,
        read_sequences,
    )
    from NeuroADLib.evaluation.longitudinal import evaluate_visits as evaluate
    from NeuroADLib.synthesis import SynthesisConfig
    from NeuroADLib.training.zscore import train_zscore

    cohort, sdm = tiny_sdm_bundle(tmp_path)
    zscore = train_zscore(cohort, tmp_path / "zscore")
    config = ProgressionConfig(growth=(0.5, 1.0), synthesis=SynthesisConfig(
        perlin_radius_voxels=(3.0, 4.0), margin_voxels=2, min_lesion_voxels=5))
    manifest = build_longitudinal_set(cohort, tmp_path / "visits", config)
    sequences = read_sequences(manifest)
    assert len(sequences) == 4  # two validation subjects, a healthy and a lesioned sequence
    for visits in sequences.values():
        assert [int(v["visit"]) for v in visits] == [1, 2]
        assert float(visits[1]["age"]) == float(visits[0]["age"]) + 1
        first, second = (sitk.GetArrayFromImage(sitk.ReadImage(v["image"])) for v in visits)
        assert not np.array_equal(first, second)  # each visit is its own acquisition
    summary = evaluate(sdm, zscore, manifest, tmp_path / "evaluation", log=_quiet)
    assert set(summary) == set(VARIANTS)
    for variant in VARIANTS:
        for visit in ("1", "2"):
            figures = summary[variant][visit]
            assert 0.0 <= figures["ap"] <= 1.0
            assert 0.0 <= figures["healthy_yen_fpr"] <= 1.0
    assert (tmp_path / "evaluation" / "visits_metrics.csv").is_file()


def test_sdm_calibrations_shared_reconstructions_equal_separate_runs(tmp_path):
    """train_sdm calibrates sdm and sdm_fam from one reconstruction per validation scan: the
    thresholds are those of each method run on its own."""
    pytest.importorskip("torch")
    from conftest import tiny_sdm_bundle

    from NeuroADLib.methods import Calibration
    from NeuroADLib.methods.sdm import load_sdm
    from NeuroADLib.preprocessing.harmonisation import IntensityStandard
    from NeuroADLib.training.data import load_split

    cohort, bundle = tiny_sdm_bundle(tmp_path)
    validation = load_split(cohort, "validation")
    standard = IntensityStandard.load(bundle)
    harmonised = [standard.harmonise(i, m)[0]
                  for i, m in zip(validation.images, validation.masks, strict=True)]
    for name in ("sdm", "sdm_fam"):
        model = load_sdm(bundle, name)
        maps = [model.predict(image, mask)[0]
                for image, mask in zip(harmonised, validation.masks, strict=True)]
        fresh = Calibration.from_healthy_maps(maps, validation.masks)
        assert Calibration.load(bundle, f"calibration_{name}").threshold == pytest.approx(
            fresh.threshold, rel=1e-5)


def test_fam_scores_keep_the_feature_distance_they_are_composed_of(tmp_path):
    """sdm_fam's scores carry D_f, and s is eq. 3.5 of D_p and it, the scale from the maxima
    over the brain eroded as the post-processing erodes it (over the whole brain with
    scale_in_eroded_brain=0, as a bundle that does not record the option ran); sdm's carry
    neither."""
    pytest.importorskip("torch")
    from conftest import tiny_sdm_bundle

    from NeuroADLib.methods.sdm import load_sdm
    from NeuroADLib.postprocessing import erode_brain_mask
    from NeuroADLib.training.data import load_split

    cohort, bundle = tiny_sdm_bundle(tmp_path)
    validation = load_split(cohort, "validation")
    image, brain = validation.images[0], validation.masks[0] > 0

    def eq_3_5(scores, weight: float, region: np.ndarray) -> np.ndarray:
        scale = scores.pixel[region].max() / scores.feature[region].max()
        return (weight * scores.pixel + scale * scores.feature) * brain

    fam = load_sdm(bundle, "sdm_fam")
    scores = fam.scores(image, brain)
    assert scores.feature is not None and scores.feature.shape == image.shape
    assert scores.feature[brain].max() > 0 and not scores.feature[~brain].any()
    eroded = erode_brain_mask(brain, fam.settings.erosion)
    assert fam.settings.scale_in_eroded_brain == 1 and 0 < eroded.sum() < brain.sum()
    np.testing.assert_allclose(scores.fam, eq_3_5(scores, fam.settings.pixel_weight, eroded),
                               rtol=1e-5, atol=1e-7)
    whole = load_sdm(bundle, "sdm_fam", {"scale_in_eroded_brain": 0}).scores(image, brain)
    np.testing.assert_allclose(whole.fam, eq_3_5(whole, fam.settings.pixel_weight, brain),
                               rtol=1e-5, atol=1e-7)
    assert not np.allclose(whole.fam, scores.fam)  # the rim's maxima set another scale
    without = load_sdm(bundle, "sdm").scores(image, brain)
    assert without.fam is None and without.feature is None
    np.testing.assert_array_equal(without.pixel, scores.pixel)


def test_a_bundle_that_does_not_record_where_fam_scales_runs_as_it_was_calibrated(tmp_path):
    """Bundles written before `scale_in_eroded_brain` took eq. 3.5's maxima over the whole
    brain: they keep running, and reporting their calibration, at 0."""
    import json

    pytest.importorskip("torch")
    from conftest import tiny_sdm_bundle

    from NeuroADLib.methods.base import calibrated_options
    from NeuroADLib.methods.sdm import load_sdm

    _, bundle = tiny_sdm_bundle(tmp_path)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["inference"]["scale_in_eroded_brain"] == 1
    del manifest["inference"]["scale_in_eroded_brain"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    for name in ("sdm_fam", "longitudinal"):
        assert load_sdm(bundle, name).settings.scale_in_eroded_brain == 0
        assert calibrated_options(manifest, name)["scale_in_eroded_brain"] == 0


def test_longitudinal_keeps_raw_scores_when_sdm_fam_outputs_normative_maps(tmp_path):
    """LAFM fuses SDM + FAM's raw scores: with the shared calibration set to normative maps
    (sdm_fam's default since its map choice), sdm_fam outputs z-maps over its normative
    threshold, and longitudinal still outputs the raw score over the raw threshold, as its
    per-patient fusion and the longitudinal benchmark read it."""
    pytest.importorskip("torch")
    from conftest import tiny_sdm_bundle

    from NeuroADLib.methods.base import Calibration, load_method
    from NeuroADLib.training.data import load_split

    cohort, bundle = tiny_sdm_bundle(tmp_path)
    # the tiny cohort has too few validation scans for a leave-one-out normative threshold
    shared = replace(Calibration.load(bundle, "calibration_sdm_fam"), normative_threshold=4.0,
                     normative_flagged_range=[0.0, 0.01])
    shared.with_map("normative").save(bundle, "calibration_sdm_fam")
    validation = load_split(cohort, "validation")
    image, brain = validation.images[0], validation.masks[0] > 0

    fam, longitudinal = (load_method(name, bundle) for name in ("sdm_fam", "longitudinal"))
    assert fam.calibration.map_kind == "normative"
    assert fam.calibration.output_threshold == shared.normative_threshold
    assert longitudinal.calibration.map_kind == "raw"
    assert longitudinal.calibration.output_threshold == shared.threshold
    raw = fam.model.predict(fam.harmonise(image, brain)[0], brain)[0]
    np.testing.assert_array_equal(longitudinal.anomaly_map(image, brain), raw)
    assert not np.allclose(fam.anomaly_map(image, brain), raw)


def test_a_native_rescan_moves_head_and_lesion_together_and_repeats_with_its_seed():
    from NeuroADLib.evaluation.longitudinal import rescanned

    shape = (30, 36, 32)
    head = ellipsoid_brain(shape).astype(np.float32) * 500 + 20
    scan = sitk.GetImageFromArray(head)
    scan.SetSpacing((2.0, 2.0, 2.0))
    brain = sitk.GetImageFromArray(ellipsoid_brain(shape).astype(np.uint8))
    brain.CopyInformation(scan)
    lesion_array = np.zeros(shape, np.uint8)
    lesion_array[12:18, 15:21, 14:20] = 1
    lesion = sitk.GetImageFromArray(lesion_array)
    lesion.CopyInformation(scan)
    first, moved = rescanned(scan, brain, lesion, seed=4)
    again, moved_again = rescanned(scan, brain, lesion, seed=4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(first), sitk.GetArrayFromImage(again))
    assert first.GetSize() == scan.GetSize() and first.GetSpacing() == scan.GetSpacing()
    assert not np.array_equal(sitk.GetArrayFromImage(first), head)
    assert abs(int(sitk.GetArrayFromImage(moved).sum()) - int(lesion_array.sum())) \
        <= 0.3 * lesion_array.sum()
    other, _ = rescanned(scan, brain, lesion, seed=5)
    assert not np.array_equal(sitk.GetArrayFromImage(first), sitk.GetArrayFromImage(other))


@pytest.mark.slow
def test_a_native_visit_carries_its_lesion_through_the_whole_preprocessing():
    """A dark ball drawn on a real scan's grid, moved onto the raw scan, re-acquired there and
    preprocessed again: the visit's grid holds the ball where it was drawn, darker."""
    from scipy import ndimage

    from NeuroADLib.evaluation import metrics
    from NeuroADLib.evaluation.longitudinal import NativeSubject, lesion_on_grid, native_visit
    from NeuroADLib.preprocessing import preprocess
    from NeuroADLib.volumes import read_volume, same_geometry

    raw = read_volume(require(IXI_SCAN))
    prepared = preprocess(raw, seed=0)
    image = sitk.GetArrayFromImage(prepared.image)
    brain = sitk.GetArrayFromImage(prepared.brain_mask) > 0
    centre = np.round(np.argwhere(brain).mean(axis=0)).astype(int)
    ball = (((np.indices(brain.shape) - centre[:, None, None, None]) ** 2).sum(0) <= 25) & brain
    subject = NativeSubject(raw, prepared.native_brain_mask, prepared.template_to_native,
                            prepared.report["normalisation"]["scale"])
    scan, lesion, visit = native_visit(subject, prepared.image, -0.3 * ball, ball, seed=3)
    assert same_geometry(scan, raw, tolerance=1e-4)
    on_grid = lesion_on_grid(lesion, visit)
    assert metrics.dice(on_grid, ball) > 0.6
    revisited = sitk.GetArrayFromImage(visit.image)
    rim = (ndimage.binary_dilation(ball, iterations=4)
           & ~ndimage.binary_dilation(ball, iterations=1) & brain)
    assert revisited[on_grid].mean() < revisited[rim].mean() - 0.1
    assert image[ball].mean() > revisited[on_grid].mean()


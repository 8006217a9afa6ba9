"""`neuroad calibrate`: a bundle recalibrated at other options or on another healthy cohort,
written as a new bundle that verifies, runs at the options it was calibrated at, and reports
other options as uncalibrated; bad requests refused before anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import ellipsoid_brain, fabricated_cohort, healthy_volume

from NeuroADLib.cli import main
from NeuroADLib.errors import (
    EXIT_BAD_INPUT,
    EXIT_MODEL,
    EXIT_USAGE,
    InputError,
    ModelError,
    OptionError,
    UsageError,
)
from NeuroADLib.methods import load_method
from NeuroADLib.methods.base import REFERENCE_SMOOTHING_SIGMA, Calibration
from NeuroADLib.models.bundles import MANIFEST, Bundle, verify_bundle
from NeuroADLib.pipeline import threshold_report
from NeuroADLib.subject import Subject
from NeuroADLib.training.provenance import file_entry
from NeuroADLib.training.recalibration import recalibrate


def quiet(message: str) -> None:
    return None


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def zscore_bundle(tmp_path_factory) -> tuple[Path, Path]:
    from NeuroADLib.training.zscore import train_zscore

    root = tmp_path_factory.mktemp("zscore")
    cohort = fabricated_cohort(root / "cohort", (16, 20, 16), 12)
    return cohort, train_zscore(cohort, root / "zscore")


@pytest.fixture(scope="module")
def cond_ldm_bundle(tmp_path_factory) -> tuple[Path, Path]:
    from conftest import tiny_cond_ldm_bundle

    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return tiny_cond_ldm_bundle(tmp_path_factory.mktemp("cond_ldm"))


def test_options_become_the_bundles_and_the_threshold_is_measured_at_them(cond_ldm_bundle,
                                                                          tmp_path):
    cohort, bundle = cond_ldm_bundle
    before = tree(bundle)
    result = recalibrate("cond_ldm", bundle, cohort, tmp_path / "recalibrated",
                         {"samples": 2, "t_int": 30, "gaussian_sigma": 1.0}, log=quiet)
    assert tree(bundle) == before  # the original is untouched
    manifest = json.loads((result.folder / MANIFEST).read_text())
    verify_bundle(Bundle(result.folder, manifest))
    assert manifest["inference"]["samples"] == 2 and manifest["inference"]["t_int"] == 30
    record = manifest["recalibrations"][-1]
    from NeuroADLib.methods.registry import COND_LDM_OPTIONS

    assert record["options"] == {**COND_LDM_OPTIONS, "t_int": 30, "respacing": 10,
                                 "median_size": 3, "erosion": 1, "samples": 2,
                                 "gaussian_sigma": 1.0}
    assert record["replaced"]["options"] == {**record["options"], "t_int": 50, "samples": 1,
                                             "gaussian_sigma": 0.0}
    # the map's description follows its post-processing
    assert manifest["anomaly_maps"]["cond_ldm"]["formula"].startswith("gaussian1(median3(")
    original = json.loads((bundle / MANIFEST).read_text())["anomaly_maps"]["cond_ldm"]
    assert original["formula"].startswith("median3(")
    assert record["subjects"] == ["s0", "s4"]
    from NeuroADLib.methods.base import REFERENCE_SMOOTHING_SIGMA

    # the statistics are smoothed as calibrations are now, whatever the old one did
    assert record["smoothing_sigma"] == REFERENCE_SMOOTHING_SIGMA
    assert record["replaced"]["smoothing_sigma"] == load_method(
        "cond_ldm", bundle).calibration.smoothing_sigma

    method = load_method("cond_ldm", result.folder)
    assert (method.model.settings.samples, method.model.settings.t_int) == (2, 30)
    # the threshold is the 1% healthy threshold of the maps at the new options
    from NeuroADLib.postprocessing import healthy_calibrated_threshold
    from NeuroADLib.training.data import load_split

    validation = load_split(cohort, "validation")
    maps = [method.model.predict(method.harmonise(image, mask)[0], mask)[0]
            for image, mask in zip(validation.images, validation.masks, strict=True)]
    expected = healthy_calibrated_threshold(maps, validation.masks, 0.01)
    assert method.calibration.threshold == pytest.approx(expected, rel=1e-6)
    assert method.calibration.threshold != pytest.approx(
        load_method("cond_ldm", bundle).calibration.threshold, rel=1e-6)

    assert threshold_report(method, 1.0, {})["calibrated_at_these_options"]
    assert threshold_report(method, 1.0, {"samples": 2})["calibrated_at_these_options"]
    # the registry's default, but not what this bundle was calibrated at
    stale = threshold_report(method, 1.0, {"samples": 1})
    assert not stale["calibrated_at_these_options"] and "samples" in stale["note"]


def test_another_cohorts_controls_recalibrate_the_threshold(zscore_bundle, tmp_path):
    cohort, bundle = zscore_bundle
    shape = (16, 20, 16)
    site = fabricated_cohort(tmp_path / "site", shape, 4)
    noise = np.random.default_rng(7)
    for k in range(4):  # a site whose scans are noisier: healthy z-scores spread further
        path = site / "subjects" / f"s{k}_image.nii.gz"
        image = healthy_volume(shape, 100 + k) + noise.normal(0, 0.05, shape)
        image = (image * ellipsoid_brain(shape)).astype(np.float32)
        sitk.WriteImage(sitk.GetImageFromArray(image), str(path))
    result = recalibrate("zscore", bundle, site, tmp_path / "site_zscore", split="all",
                         log=quiet)
    assert sorted(result.subjects) == ["s0", "s1", "s2", "s3"]
    trained = Calibration.load(bundle, "calibration")
    assert result.calibration.threshold > trained.threshold * 1.1
    manifest = json.loads((result.folder / MANIFEST).read_text())
    assert manifest["calibration"]["threshold"] == result.calibration.threshold
    assert manifest["recalibrations"][-1]["split"] == "all"


def test_the_healthy_statistics_are_smoothed_as_asked(zscore_bundle, tmp_path):
    from NeuroADLib.postprocessing import ReferenceStatistics, normative_threshold
    from NeuroADLib.training.data import load_split

    cohort, bundle = zscore_bundle
    result = recalibrate("zscore", bundle, cohort, tmp_path / "wide", log=quiet,
                         smoothing_sigma=4.0)
    calibration = Calibration.load(result.folder, "calibration")
    record = json.loads((result.folder / MANIFEST).read_text())["recalibrations"][-1]
    assert calibration.smoothing_sigma == record["smoothing_sigma"] == 4.0
    method = load_method("zscore", result.folder)
    validation = load_split(cohort, "validation")
    maps = [method.model.predict(method.harmonise(image, mask)[0], mask, Subject(age, sex))[0]
            for image, mask, age, sex in zip(validation.images, validation.masks,
                                             validation.ages, validation.sexes, strict=True)]
    expected = ReferenceStatistics.from_healthy_maps(maps, validation.masks, 0.01, 4.0)
    covered = np.isfinite(expected.std)
    np.testing.assert_allclose(calibration.reference.std[covered], expected.std[covered],
                               rtol=2e-3)  # stored in half precision
    assert calibration.normative_threshold == pytest.approx(
        normative_threshold(maps, validation.masks, 0.01, 0.01, 4.0)[0], rel=1e-6)
    default = Calibration.load(recalibrate("zscore", bundle, cohort, tmp_path / "default",
                                           log=quiet).folder, "calibration")
    assert default.smoothing_sigma == 2.0
    assert not np.allclose(default.reference.std[covered], calibration.reference.std[covered])
    again = Calibration.load(recalibrate("zscore", result.folder, cohort, tmp_path / "again",
                                         log=quiet).folder, "calibration")
    assert again.smoothing_sigma == 4.0  # a bundle's own smoothing is kept unless told
    np.testing.assert_array_equal(again.reference.std, calibration.reference.std)


def test_a_calibration_made_before_smoothing_is_recalibrated_at_the_reference_sigma(
        zscore_bundle, tmp_path):
    cohort, bundle = zscore_bundle
    old = shutil.copytree(bundle, tmp_path / "old")
    meta = json.loads((old / "calibration.json").read_text())
    del meta["smoothing_sigma"]  # as calibrations made before smoothing are stored
    (old / "calibration.json").write_text(json.dumps(meta))
    manifest = json.loads((old / MANIFEST).read_text())
    manifest["files"]["calibration.json"] = file_entry(old / "calibration.json")
    (old / MANIFEST).write_text(json.dumps(manifest))
    assert Calibration.load(old, "calibration").smoothing_sigma == 0.0
    result = recalibrate("zscore", old, cohort, tmp_path / "new", log=quiet)
    assert result.calibration.smoothing_sigma == REFERENCE_SMOOTHING_SIGMA


def test_bad_requests_are_refused_and_write_nothing(zscore_bundle, cond_ldm_bundle, tmp_path):
    cohort, bundle = zscore_bundle
    out = tmp_path / "out"
    with pytest.raises(OptionError, match="no_such"):
        recalibrate("cond_ldm", cond_ldm_bundle[1], cohort, out, {"no_such": 1}, log=quiet)
    with pytest.raises(ModelError, match="serves zscore, not cddpm"):
        recalibrate("cddpm", bundle, cohort, out, log=quiet)
    with pytest.raises(UsageError, match="recalibrate sdm_fam"):
        recalibrate("longitudinal", bundle, cohort, out, log=quiet)
    with pytest.raises(InputError, match="does not exist"):
        recalibrate("zscore", bundle, tmp_path / "nowhere", out, log=quiet)
    with pytest.raises(UsageError, match="split"):
        recalibrate("zscore", bundle, cohort, out, split="test", log=quiet)
    with pytest.raises(UsageError, match="smoothing sigma"):
        recalibrate("zscore", bundle, cohort, out, log=quiet, smoothing_sigma=-1.0)
    tampered = shutil.copytree(bundle, tmp_path / "tampered")
    (tampered / "calibration.json").write_text("{}")
    with pytest.raises(ModelError, match="corrupt"):
        recalibrate("zscore", tampered, cohort, out, log=quiet)
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    out.mkdir()
    with pytest.raises(UsageError, match="exists"):
        recalibrate("zscore", bundle, cohort, out, log=quiet)


def test_a_method_sharing_its_bundles_settings_is_recalibrated_at_options_of_its_own(
        cond_ldm_bundle, tmp_path):
    from NeuroADLib.methods.base import calibrated_options, method_settings

    cohort, bundle = cond_ldm_bundle
    shared = shutil.copytree(bundle, tmp_path / "shared")
    manifest = json.loads((shared / MANIFEST).read_text())
    manifest["variants"] = ["cond_ldm_other"]  # another method on the same settings
    (shared / MANIFEST).write_text(json.dumps(manifest))
    result = recalibrate("cond_ldm", shared, cohort, tmp_path / "out", {"samples": 2},
                         log=quiet)
    inference = json.loads((result.folder / MANIFEST).read_text())["inference"]
    # the shared settings stay the other method's; cond_ldm's own lie over them
    assert inference["cond_ldm"] == {"samples": 2}
    assert {k: v for k, v in inference.items() if k != "cond_ldm"} == manifest["inference"]
    assert method_settings(inference, "cond_ldm_other") == manifest["inference"]
    assert method_settings(inference, "cond_ldm") == {**manifest["inference"], "samples": 2}
    assert calibrated_options({"inference": inference}, "cond_ldm")["samples"] == 2
    assert load_method("cond_ldm", result.folder).model.settings.samples == 2


def test_the_command_line_exit_codes(zscore_bundle, tmp_path, capsys):
    cohort, bundle = zscore_bundle
    args = ["calibrate", "zscore", "--model", str(bundle), "--cohort", str(cohort)]
    assert main([*args, "--out", str(tmp_path / "a"), "--option", "cadd.t_int=5"]) == EXIT_USAGE
    assert main([*args[:-2], "--cohort", str(tmp_path / "none"),
                 "--out", str(tmp_path / "b")]) == EXIT_BAD_INPUT
    assert main(["calibrate", "zscore", "--model", str(cohort), "--cohort", str(cohort),
                 "--out", str(tmp_path / "c")]) == EXIT_MODEL
    assert "not a model bundle" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "e"), "--smoothing-sigma", "-2"]) == EXIT_USAGE
    assert main([*args, "--out", str(tmp_path / "d"), "--threads", "1",
                 "--smoothing-sigma", "3"]) == 0
    verify_bundle(Bundle(tmp_path / "d", json.loads((tmp_path / "d" / MANIFEST).read_text())))
    assert Calibration.load(tmp_path / "d", "calibration").smoothing_sigma == 3.0
    assert not any((tmp_path / name).exists() for name in "abce")


def test_options_recalibrated_for_one_method_reach_the_methods_thresholded_by_its_calibration():
    """The longitudinal method is thresholded by sdm_fam's calibration: recalibrating sdm_fam
    at an option sets it for both, and leaves sdm (its own calibration) at the shared one."""
    from NeuroADLib.methods.base import calibrated_options
    from NeuroADLib.training.recalibration import _with_options

    manifest = {"method": "sdm_fam", "variants": ["sdm", "longitudinal"],
                "inference": {"steps": 10, "scale_in_eroded_brain": 0}}
    inference = _with_options(manifest, "sdm_fam", {"scale_in_eroded_brain": 1})
    recalibrated = {**manifest, "inference": inference}
    for name in ("sdm_fam", "longitudinal"):
        assert inference[name] == {"scale_in_eroded_brain": 1}
        assert "scale_in_eroded_brain" not in calibrated_options(recalibrated, name)
    assert "sdm" not in inference and inference["scale_in_eroded_brain"] == 0
    alone = _with_options({"method": "sdm_fam", "inference": {"steps": 10}}, "sdm_fam",
                          {"steps": 20})
    assert alone == {"steps": 20}

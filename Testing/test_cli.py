"""The `neuroad` command line: real runs, exit codes, no partial outputs, input untouched."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import IXI_SCAN, require

from NeuroADLib.errors import EXIT_BAD_INPUT, EXIT_MODEL, EXIT_OUTPUT


def neuroad(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "NeuroADLib", *args, "--threads", "2"]
                          if args and args[0] == "preprocess" else
                          [sys.executable, "-m", "NeuroADLib", *args],
                          capture_output=True, text=True, timeout=600)


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_preprocess_writes_every_output_and_leaves_the_input_untouched(tmp_path):
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(require(IXI_SCAN).read_bytes())
    before = digest(scan)
    result = neuroad("preprocess", str(scan), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert names == {"image.nii.gz", "brain_mask.nii.gz", "native_brain_mask.nii.gz",
                     "template_to_native.tfm", "preprocess.json", "qc.png"}
    report = json.loads((tmp_path / "out" / "preprocess.json").read_text())
    assert 1000 < report["quality"]["brain_volume_ml"] < 2000
    assert "brain volume" in result.stdout
    assert digest(scan) == before


@pytest.mark.parametrize("case", ["missing", "constant", "2d", "garbage"])
def test_bad_input_exit_code_and_no_outputs(tmp_path, case):
    path = tmp_path / "scan.nii.gz"
    if case == "constant":
        sitk.WriteImage(sitk.GetImageFromArray(np.ones((10, 10, 10), np.float32)), str(path))
    elif case == "2d":
        sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(10, 10).astype(np.float32)),
                        str(path))
    elif case == "garbage":
        path.write_bytes(b"garbage" * 100)
    before = digest(path) if path.exists() else None
    result = neuroad("preprocess", str(path), "--out", str(tmp_path / "out"))
    assert result.returncode == EXIT_BAD_INPUT
    assert result.stderr.startswith("neuroad: error:")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    if before:
        assert digest(path) == before


def test_non_head_volume_is_refused(tmp_path):
    """A 4 cm cube of noise in a head-sized field of view is not a head: brain extraction
    cannot find a plausible brain."""
    path = tmp_path / "cube.nii.gz"
    array = np.zeros((50, 50, 50), np.float32)
    array[15:35, 15:35, 15:35] = np.random.default_rng(0).random((20, 20, 20)) + 1
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((2.0, 2.0, 2.0))
    sitk.WriteImage(image, str(path))
    result = neuroad("preprocess", str(path), "--out", str(tmp_path / "out"))
    assert result.returncode == EXIT_BAD_INPUT, result.stderr
    assert "plausible" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("size, spacing, message", [
    ((96, 96, 60), 20.0, "Is the header in cm (then 2 mm)?"),
    ((4, 4, 4), 1.0, "4 x 4 x 4 voxels is too small to hold a brain"),
])
def test_preprocess_refuses_a_volume_no_head_mri_has_at_once(tmp_path, size, spacing, message):
    path = tmp_path / "scan.nii.gz"
    image = sitk.GetImageFromArray(np.random.default_rng(0).random(size[::-1]).astype(np.float32))
    image.SetSpacing((spacing,) * 3)
    sitk.WriteImage(image, str(path))
    before = digest(path)
    result = neuroad("preprocess", str(path), "--out", str(tmp_path / "out"))
    assert result.returncode == EXIT_BAD_INPUT, result.stderr
    assert message in result.stderr and "internal error" not in result.stderr
    assert not (tmp_path / "out").exists() and digest(path) == before


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = neuroad("preprocess", str(tmp_path / "x.nii.gz"), "--out", str(blocker / "out"))
    assert result.returncode == EXIT_OUTPUT
    assert "not a folder" in result.stderr


def test_help_has_examples():
    top = neuroad("--help")
    assert top.returncode == 0 and "preprocess" in top.stdout and "evaluate" in top.stdout
    for command in ("preprocess", "prepare-cohort", "demo", "run", "synth", "train",
                    "make-benchmarks", "evaluate", "models"):
        result = neuroad(command, "--help")
        assert result.returncode == 0 and "example:" in result.stdout


def test_an_autoencoder_architecture_is_refused_by_the_other_trainers(tmp_path):
    from NeuroADLib.errors import EXIT_USAGE

    out = tmp_path / "model"
    result = neuroad("train", "mad_ad", "--cohort", str(tmp_path), "--out", str(out),
                     "--config", "latent16")
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "autoencoder architecture" in result.stderr and not out.exists()


def test_a_decay_start_past_the_last_step_is_refused_before_anything_is_written(tmp_path):
    from NeuroADLib.errors import EXIT_USAGE

    out = tmp_path / "model"
    result = neuroad("train", "autoencoder", "--cohort", str(tmp_path), "--out", str(out),
                     "--steps", "10", "--decay-from", "10")
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "--decay-from 10" in result.stderr and not out.exists()


def test_evaluate_names_the_folder_a_method_is_missing_from(tmp_path):
    """`neuroad evaluate --models FOLDER` reads FOLDER/METHOD: a folder laid out otherwise (a
    bundle named by its id) is a model error naming the folder it needs, before any output."""
    models = tmp_path / "models"
    (models / "zscore-ixi-2mm").mkdir(parents=True)
    result = neuroad("evaluate", "--methods", "zscore", "--models", str(models), "--cases",
                     str(tmp_path / "cases.csv"), "--out", str(tmp_path / "out"))
    assert result.returncode == EXIT_MODEL, result.stderr
    assert f"{models / 'zscore'}" in result.stderr and "one folder per method" in result.stderr
    assert not (tmp_path / "out").exists()


def test_mad_ad_takes_a_reused_autoencoder_or_autoencoder_steps_not_both(tmp_path):
    from NeuroADLib.errors import EXIT_USAGE

    out = tmp_path / "model"
    result = neuroad("train", "mad_ad", "--cohort", str(tmp_path), "--out", str(out),
                     "--autoencoder", str(tmp_path), "--autoencoder-steps", "10")
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "not both" in result.stderr and not out.exists()
    result = neuroad("train", "mad_ad", "--cohort", str(tmp_path), "--out", str(out),
                     "--unet-channels", "32,64")
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "3 levels" in result.stderr and not out.exists()
    result = neuroad("train", "mad_ad", "--cohort", str(tmp_path), "--out", str(out),
                     "--mask-ratio-max", "1.5")
    assert result.returncode == EXIT_USAGE and not out.exists()
    result = neuroad("train", "mad_ad", "--cohort", str(tmp_path), "--out", str(out),
                     "--foreign-fill", "0.5", "--pathology-fill", "0.5")
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "--foreign-fill or --pathology-fill" in result.stderr and not out.exists()
    result = neuroad("train", "mad_ad", "--cohort", str(tmp_path), "--out", str(out),
                     "--pathology-clean")
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "--pathology-clean needs --pathology-fill" in result.stderr and not out.exists()

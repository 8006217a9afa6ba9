"""Fluid-driven anomaly randomization: the flow's properties in closed form, and the lesions."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from NeuroADLib.grid import GridSpec
from NeuroADLib.synthesis import (
    SynthesisConfig,
    advect_diffuse,
    divergence,
    load_library,
    perlin_noise,
    random_velocity,
    synthesize,
)


def test_perlin_is_seeded_smooth_and_zero_on_the_lattice():
    a = perlin_noise((32, 32, 32), (4, 4, 4), np.random.default_rng(1))
    b = perlin_noise((32, 32, 32), (4, 4, 4), np.random.default_rng(1))
    c = perlin_noise((32, 32, 32), (4, 4, 4), np.random.default_rng(2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.abs(a[::8, ::8, ::8]).max() < 1e-12  # gradient noise vanishes at lattice points
    assert np.abs(a).max() <= 1.0 + 1e-9
    assert np.abs(np.diff(a, axis=0)).max() < 0.5  # smooth: small voxel-to-voxel steps


def test_curl_velocity_is_divergence_free():
    velocity = random_velocity((24, 28, 20), np.random.default_rng(0))
    assert np.abs(velocity).max() == pytest.approx(1.0)
    interior = divergence(velocity)[2:-2, 2:-2, 2:-2]
    assert np.abs(interior).max() < 1e-12


def blob(shape=(40, 40, 40), centre=(20, 20, 12), radius=4.0) -> np.ndarray:
    grids = np.indices(shape)
    return (sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True)) <= radius**2) * 1.0


def test_uniform_flow_moves_the_centroid_by_speed_times_time():
    p0 = blob()
    velocity = np.zeros((3, 40, 40, 40))
    velocity[2] = 1.0  # +x, one voxel per unit time
    inside = np.ones(p0.shape, bool)
    p = advect_diffuse(p0, velocity, inside, duration=5.0)
    centroid = lambda q: (q * np.indices(q.shape)).reshape(3, -1).sum(1) / q.sum()  # noqa: E731
    assert p.sum() == pytest.approx(p0.sum(), rel=1e-9)  # upwind is conservative here
    np.testing.assert_allclose(centroid(p) - centroid(p0), [0.0, 0.0, 5.0], atol=1e-9)


def test_no_flow_leaves_p_unchanged_and_nothing_leaves_the_domain():
    p0 = blob()
    inside = blob(radius=9.0, centre=(20, 20, 15)) > 0
    assert np.array_equal(advect_diffuse(p0, np.zeros((3, 40, 40, 40)), inside, 3.0),
                          p0 * inside)
    velocity = random_velocity(p0.shape, np.random.default_rng(3)) * 2.0
    p = advect_diffuse(p0, velocity, inside, duration=6.0)
    assert np.all(p[~inside] == 0) and p.min() >= 0 and p.max() <= 1


def test_diffusion_conserves_mass_behind_a_zero_flux_wall():
    p0 = blob(radius=3.0, centre=(20, 20, 20))
    inside = blob(radius=8.0, centre=(20, 20, 20)) > 0
    p = advect_diffuse(p0, np.zeros((3, 40, 40, 40)), inside, duration=20.0, diffusion=0.3)
    assert p.sum() == pytest.approx(p0.sum(), rel=1e-9)
    assert p.max() < p0.max() and np.count_nonzero(p > 1e-3) > np.count_nonzero(p0)


def healthy_case():
    rng = np.random.default_rng(0)
    brain = blob((48, 56, 48), (24, 28, 24), 20.0) > 0
    image = np.where(brain, 0.6 + 0.2 * rng.random(brain.shape), 0.0).astype(np.float32)
    return image, brain


def test_synthesis_is_deterministic_and_exact():
    image, brain = healthy_case()
    a = synthesize(image, brain, seed=5)
    b = synthesize(image, brain, seed=5)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert a.mask.any() and not np.any(a.mask & ~brain)
    assert np.array_equal(a.image != image, a.mask & (a.image != image))  # only lesion changes
    assert np.all((a.probability > 0) == a.mask)
    assert not np.array_equal(synthesize(image, brain, seed=6).mask, a.mask)
    minimum = SynthesisConfig().min_lesion_voxels
    for seed in range(10):  # too-small draws are redrawn: no scan without a real lesion
        assert synthesize(image, brain, seed=seed).mask.sum() >= minimum


@pytest.mark.parametrize("contrast, sign", [("t1", -1.0), ("flair", 1.0)])
def test_lesions_are_hypo_on_t1_and_hyper_on_flair(contrast, sign):
    image, brain = healthy_case()
    config = SynthesisConfig(contrast=contrast, sign_flip_probability=0.0)
    changes = [np.mean(s.image[s.mask] - image[s.mask])
               for s in (synthesize(image, brain, seed, config=config) for seed in range(12))
               if s.mask.any()]
    assert np.mean(np.sign(changes) == sign) >= 0.75


def test_library_shapes_are_components(tmp_path):
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[2:5, 2:5, 2:5] = 1
    mask[10:16, 10:12, 10:13] = 1
    sitk.WriteImage(sitk.GetImageFromArray(mask), str(tmp_path / "case.nii.gz"))
    shapes = load_library(tmp_path)
    assert sorted(s.shape for s in shapes) == [(3, 3, 3), (6, 2, 3)]
    image, brain = healthy_case()
    result = synthesize(image, brain, seed=1, library=shapes)
    assert result.mask.any()


def test_synth_command_on_a_grid_image(tmp_path):
    grid = GridSpec(spacing=(4.0, 4.0, 4.0), shape=(48, 56, 48), origin_ras=(-94, -128, -90))
    image, brain = healthy_case()
    volume = sitk.GetImageFromArray(image)
    volume.CopyInformation(grid.reference_image())
    path = tmp_path / "grid.nii.gz"
    sitk.WriteImage(volume, str(path))
    from NeuroADLib.synthesis.files import synthesize_file

    report = synthesize_file(path, tmp_path / "out", seed=2, grid=grid)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["brain_mask.nii.gz", "image.nii.gz", "lesion_mask.nii.gz",
                     "lesion_probability.nii.gz", "synth.json"]
    lesion = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "lesion_mask.nii.gz")))
    assert report["lesion_volume_ml"] == pytest.approx(lesion.sum() * 0.064)
    assert json.loads((tmp_path / "out" / "synth.json").read_text())["seed"] == 2


def test_synth_cli_rejects_a_missing_scan(tmp_path):
    result = subprocess.run([sys.executable, "-m", "NeuroADLib", "synth", str(tmp_path / "x.nii"),
                             "--out", str(tmp_path / "o"), "--seed", "1"],
                            capture_output=True, text=True)
    assert result.returncode == 3 and "not found" in result.stderr
    assert not (tmp_path / "o").exists()

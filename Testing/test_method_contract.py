"""Every registered method family held to the one method contract (`methods.base.AnomalyModel`)
from a tiny bundle of its own, and the layering rule that methods and bundles import nothing
from training.

A new family needs one entry in BUNDLE_BUILDERS (a function that builds a tiny bundle of it),
not new tests of the plumbing; a registered family without one fails
`test_every_registered_family_has_a_bundle_builder`.
"""

from __future__ import annotations

import ast
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    TINY_CADD_SHAPE,
    ellipsoid_brain,
    fabricated_cohort,
    healthy_volume,
    tiny_cadd_bundle,
    tiny_cadd_stages,
    tiny_cddpm_bundle,
    tiny_cond_ldm_bundle,
    tiny_ddpm_bundle,
    tiny_mad_ad_bundle,
    tiny_sdm_bundle,
)

from NeuroADLib.errors import ModelError, OptionError
from NeuroADLib.methods import METHODS, AnomalyModel, Calibration, load_method
from NeuroADLib.methods import registry as registry_module
from NeuroADLib.methods.base import resolve_loader
from NeuroADLib.methods.registry import validate_options
from NeuroADLib.models.bundles import MANIFEST, Bundle, verify_bundle
from NeuroADLib.subject import Subject

PACKAGE = Path(__file__).resolve().parents[1] / "NeuroADLib"
SUBJECT = Subject(44.0, "F")


@dataclass(frozen=True)
class TinyBundle:
    """A bundle folder holding every method of one family, and the grid shape it runs on."""

    folder: Path
    shape: tuple[int, int, int]


def zscore_bundle(root: Path) -> TinyBundle:
    from NeuroADLib.training.zscore import train_zscore

    shape = (16, 20, 16)
    cohort = fabricated_cohort(root / "cohort", shape, 8)
    return TinyBundle(train_zscore(cohort, root / "zscore"), shape)


def cadd_bundle(root: Path) -> TinyBundle:
    torch = pytest.importorskip("torch")
    pytest.importorskip("einops")
    torch.set_num_threads(1)
    cohort, autoencoder = tiny_cadd_stages(root)
    return TinyBundle(tiny_cadd_bundle(root, cohort, autoencoder), TINY_CADD_SHAPE)


def mad_ad_bundle(root: Path) -> TinyBundle:
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return TinyBundle(tiny_mad_ad_bundle(root)[1], TINY_CADD_SHAPE)


def cddpm_bundle(root: Path) -> TinyBundle:
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return TinyBundle(tiny_cddpm_bundle(root)[1], TINY_CADD_SHAPE)


def ddpm_bundle(root: Path) -> TinyBundle:
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return TinyBundle(tiny_ddpm_bundle(root)[1], TINY_CADD_SHAPE)


def sdm_bundle(root: Path) -> TinyBundle:
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return TinyBundle(tiny_sdm_bundle(root)[1], TINY_CADD_SHAPE)


def cond_ldm_bundle(root: Path) -> TinyBundle:
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return TinyBundle(tiny_cond_ldm_bundle(root)[1], TINY_CADD_SHAPE)


# family -> a function building a tiny bundle of every method of that family
BUNDLE_BUILDERS: dict[str, Callable[[Path], TinyBundle]] = {
    "zscore": zscore_bundle,
    "cadd": cadd_bundle,
    "mad_ad": mad_ad_bundle,
    "cddpm": cddpm_bundle,
    "ddpm": ddpm_bundle,
    "sdm": sdm_bundle,
    "cond_ldm": cond_ldm_bundle,
}
FAMILIES = sorted({info.family for info in METHODS.values()})


def first_method(family: str) -> str:
    return next(name for name, info in METHODS.items() if info.family == family)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> Callable[[str], TinyBundle]:
    """The family's tiny bundle, built once per module."""
    built: dict[str, TinyBundle] = {}

    def get(family: str) -> TinyBundle:
        if family not in BUNDLE_BUILDERS:
            pytest.fail(f"method family {family!r} has no entry in BUNDLE_BUILDERS")
        if family not in built:
            built[family] = BUNDLE_BUILDERS[family](tmp_path_factory.mktemp(family))
        return built[family]

    return get


def scan(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A healthy-looking grid image with a bright blob, and a brain mask that leaves out a
    slab of that image (so that "zero outside the brain" is not "zero where the image is")."""
    image = healthy_volume(shape, 1234)
    centre = tuple(n // 2 for n in shape)
    image[tuple(slice(c - 2, c + 2) for c in centre)] = 1.0
    brain = ellipsoid_brain(shape)
    brain[:, :, : shape[2] // 4] = False
    return image, brain


class Stop(Exception):
    pass


def test_every_registered_family_has_a_bundle_builder():
    missing = sorted(set(FAMILIES) - set(BUNDLE_BUILDERS))
    assert not missing, f"add a tiny-bundle builder to BUNDLE_BUILDERS for {missing}"


def test_a_family_has_one_loader_and_every_loader_resolves():
    for family in FAMILIES:
        loaders = {info.loader for info in METHODS.values() if info.family == family}
        assert len(loaders) == 1, f"{family} has several loaders: {loaders}"
        assert callable(resolve_loader(loaders.pop()))


@pytest.mark.parametrize("target, problem", [
    ("NeuroADLib.methods.zscore", "package.module:function"),
    ("NeuroADLib.methods.no_such_family:load", "no module"),
    ("no_such_package.methods:load", "no module"),
    ("NeuroADLib.methods.zscore:no_such_loader", "no function"),
])
def test_a_loader_that_does_not_resolve_is_a_model_error(target, problem):
    with pytest.raises(ModelError, match=problem):
        resolve_loader(target)


def test_an_unknown_method_or_an_unresolvable_loader_fails_loudly(tmp_path, monkeypatch):
    with pytest.raises(ModelError, match="Unknown method"):
        load_method("no_such_method", tmp_path)
    broken = replace(METHODS["zscore"], loader="NeuroADLib.methods.no_such_family:load")
    monkeypatch.setitem(registry_module.METHODS, "zscore", broken)
    with pytest.raises(ModelError, match="no_such_family"):
        load_method("zscore", tmp_path)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_method_of_the_family_loads_from_its_bundle(family, bundles):
    tiny = bundles(family)
    for name, info in METHODS.items():
        if info.family != family:
            continue
        method = load_method(name, tiny.folder, dict(info.options))  # the defaults: accepted
        assert isinstance(method.model, AnomalyModel)
        assert method.name == name and method.calibration.threshold > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_predict_gives_float32_grid_maps_zero_outside_the_brain(family, bundles):
    tiny = bundles(family)
    image, brain = scan(tiny.shape)
    method = load_method(first_method(family), tiny.folder).to("cpu")
    for anomaly, healthy in (method.model.predict(image, brain, SUBJECT),
                             method.predict(image, brain, SUBJECT)):
        for output in (anomaly, healthy):
            assert output.dtype == np.float32 and output.shape == image.shape
            assert np.all(np.isfinite(output)) and np.all(output[~brain] == 0)
        assert np.all(anomaly >= 0) and anomaly[brain].max() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_the_same_input_gives_the_same_output(family, bundles):
    tiny = bundles(family)
    image, brain = scan(tiny.shape)
    name = first_method(family)
    first = load_method(name, tiny.folder).predict(image, brain, SUBJECT)
    second = load_method(name, tiny.folder).predict(image, brain, SUBJECT)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("family", FAMILIES)
def test_on_step_is_monotone_and_cancels(family, bundles):
    tiny = bundles(family)
    image, brain = scan(tiny.shape)
    method = load_method(first_method(family), tiny.folder)
    calls = []
    method.model.predict(image, brain, SUBJECT, lambda done, total: calls.append((done, total)))
    assert calls, "on_step must be called at least once"
    done = [d for d, _ in calls]
    assert done == sorted(done) and all(0 <= d <= t for d, t in calls)

    def cancel(done: int, total: int) -> None:
        raise Stop(f"at {done} of {total}")

    with pytest.raises(Stop):
        method.model.predict(image, brain, SUBJECT, cancel)
    with pytest.raises(Stop):
        method.run(image, brain, SUBJECT, cancel)


@pytest.mark.parametrize("family", FAMILIES)
def test_unknown_options_are_refused(family, bundles):
    tiny = bundles(family)
    name = first_method(family)
    with pytest.raises(OptionError, match="no_such_option"):
        load_method(name, tiny.folder, {"no_such_option": 1})
    with pytest.raises(ValueError, match="no_such_option"):
        validate_options(name, {"no_such_option": 1})


@pytest.mark.parametrize("family", FAMILIES)
def test_calibration_round_trips(family, bundles, tmp_path):
    calibration = load_method(first_method(family), bundles(family).folder).calibration
    calibration.save(tmp_path, "again")
    again = Calibration.load(tmp_path, "again")
    assert (again.threshold, again.fpr, again.healthy_flagged_range) == (
        calibration.threshold, calibration.fpr, calibration.healthy_flagged_range)
    for field in ("mean", "std", "index_mean", "index_std", "top_fraction"):
        np.testing.assert_array_equal(getattr(again.reference, field),
                                      getattr(calibration.reference, field), err_msg=field)


@pytest.mark.parametrize("family", FAMILIES)
def test_recalibrating_on_the_training_cohort_reproduces_the_calibration(family, bundles,
                                                                          tmp_path):
    """`neuroad calibrate` on the cohort's own validation split at the bundle's options
    measures what training measured (to the half precision the bundle stores)."""
    from NeuroADLib.training.recalibration import recalibrate

    tiny, name = bundles(family), first_method(family)
    result = recalibrate(name, tiny.folder, tiny.folder.parent / "cohort", tmp_path / "again",
                         log=lambda message: None)
    trained = load_method(name, tiny.folder).calibration
    again = load_method(name, result.folder).calibration
    np.testing.assert_allclose(again.threshold, trained.threshold, rtol=0.02)
    np.testing.assert_allclose(again.reference.index_mean, trained.reference.index_mean,
                               rtol=0.02)
    assert again.map_kind == trained.map_kind
    verify_bundle(Bundle(result.folder, json.loads((result.folder / MANIFEST).read_text())))


@pytest.mark.parametrize("family", FAMILIES)
def test_the_bundle_verifies_and_a_tampered_one_does_not(family, bundles, tmp_path):
    folder = bundles(family).folder
    verify_bundle(Bundle(folder, json.loads((folder / MANIFEST).read_text())))
    copy = shutil.copytree(folder, tmp_path / "copy")
    manifest = json.loads((copy / MANIFEST).read_text())
    weights = max(manifest["files"], key=lambda name: manifest["files"][name]["bytes"])
    data = bytearray((copy / weights).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / weights).write_bytes(bytes(data))
    with pytest.raises(ModelError, match="corrupt"):
        verify_bundle(Bundle(copy, manifest))


def imported_modules(source: str, package: tuple[str, ...]) -> set[str]:
    """The absolute names of every module (and imported name) a file of `package` imports,
    relative imports resolved."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = list(package[:len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names |= {module} | {f"{module}.{alias.name}" for alias in node.names}
    return names


def from_training(names: set[str]) -> list[str]:
    return sorted(n for n in names if n == "NeuroADLib.training"
                  or n.startswith("NeuroADLib.training."))


def test_the_import_check_sees_every_form_of_import():
    source = ("from ..training.provenance import sha256\nfrom .. import training\n"
              "import NeuroADLib.training.zscore\nfrom ..networks import autoencoder\n")
    assert from_training(imported_modules(source, ("NeuroADLib", "methods"))) == [
        "NeuroADLib.training", "NeuroADLib.training.provenance",
        "NeuroADLib.training.provenance.sha256", "NeuroADLib.training.zscore"]


def test_methods_and_bundles_import_nothing_from_training():
    files = sorted((PACKAGE / "methods").rglob("*.py")) + sorted(
        (PACKAGE / "models").rglob("*.py"))
    assert len(files) >= 4
    offenders = {}
    for path in files:
        package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
        names = from_training(imported_modules(path.read_text(), package))
        if names:
            offenders[str(path.relative_to(PACKAGE))] = names
    assert not offenders, f"methods and bundles must not import training: {offenders}"

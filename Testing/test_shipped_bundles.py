"""Every bundle shipped in the package loads, for every method it serves, from what its
manifest says (networks built from the recorded configs, weights loaded strictly, calibration
and intensity standard read), and carries the provenance a trained model must record."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import REPO

from NeuroADLib.methods.base import load_method
from NeuroADLib.methods.registry import METHODS

SHIPPED = REPO / "NeuroADLib" / "models" / "bundled"
PROVENANCE = ("training_command", "code_version", "training_data", "metrics", "licence", "files")


def shipped_methods() -> list[tuple[str, str]]:
    """(bundle folder name, method) for every registered method a shipped bundle serves."""
    pairs = []
    for folder in sorted(p for p in SHIPPED.iterdir() if (p / "manifest.json").is_file()):
        manifest = json.loads((folder / "manifest.json").read_text())
        served = dict.fromkeys([manifest["method"], *manifest.get("variants", [])])
        pairs += [(folder.name, method) for method in served if method in METHODS]
    return pairs


@pytest.mark.parametrize("folder", sorted(p.name for p in SHIPPED.iterdir() if p.is_dir()))
def test_every_shipped_bundle_records_how_it_was_made(folder):
    manifest = json.loads((SHIPPED / folder / "manifest.json").read_text())
    assert [key for key in PROVENANCE if not manifest.get(key)] == []
    assert "IXI" in json.dumps(manifest["training_data"])  # the licence travels with the data


@pytest.mark.parametrize(("folder", "method"), shipped_methods())
def test_every_shipped_method_loads_from_its_bundle(folder, method):
    loaded = load_method(method, SHIPPED / folder)
    assert np.isfinite(loaded.calibration.output_threshold)
    assert loaded.standard is not None  # every shipped model was trained harmonised

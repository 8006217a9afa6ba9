"""Recording in a bundle which map its method outputs by default (raw or normative, issue 11
item 6) and the benchmark figures that chose it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..hashing import sha256
from ..methods.base import Calibration
from ..postprocessing import normative_threshold


def choose_map(folder: str | Path, calibration: str, kind: str, figures: dict,
               healthy_maps: list[np.ndarray] | None = None,
               healthy_masks: list[np.ndarray] | None = None,
               smoothing_sigma: float | None = None) -> Calibration:
    """Set the calibration's map kind, fill in its normative threshold from the method's maps
    of the healthy validation scans where the calibration predates normative maps, and record
    the choice with its figures in the bundle manifest (the calibration file's size and
    sha256 updated). `smoothing_sigma`, when given, is what the figures' healthy statistics
    were smoothed with: a calibration smoothed otherwise is refused, since the figures would
    not describe it."""
    folder = Path(folder)
    current = Calibration.load(folder, calibration)
    if smoothing_sigma is not None and smoothing_sigma != current.smoothing_sigma:
        raise ValueError(f"{calibration} smooths its healthy statistics with sigma "
                         f"{current.smoothing_sigma}, the figures with {smoothing_sigma}: "
                         "recalibrate the bundle (`neuroad calibrate`) or measure at its sigma")
    if current.normative_threshold is None:
        if healthy_maps is None:
            raise ValueError(f"{calibration} has no normative threshold: give the healthy "
                             "validation maps to compute it")
        threshold, flagged = normative_threshold(healthy_maps, healthy_masks, current.fpr,
                                                 current.reference.top_fraction,
                                                 current.smoothing_sigma)
        current.normative_threshold = threshold
        current.normative_flagged_range = [min(flagged), max(flagged)]
    chosen = current.with_map(kind)
    chosen.save(folder, calibration)
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for name in (f"{calibration}.json", f"{calibration}.safetensors"):
        manifest["files"][name] = {"bytes": (folder / name).stat().st_size,
                                   "sha256": sha256(folder / name)}
    manifest.setdefault("map_choice", {})[calibration] = {"map": kind, "figures": figures}
    manifest_path.write_text(json.dumps(manifest, indent=2, default=float))
    return chosen

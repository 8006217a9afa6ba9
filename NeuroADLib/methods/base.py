"""What every method provides (`AnomalyModel`), its calibration, and loading a method by name
through the loader the registry names for it."""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import ModelError, OptionError
from ..postprocessing import (
    ReferenceStatistics,
    healthy_calibrated_threshold,
    normative_map,
    normative_threshold,
    zscore_map,
)
from ..preprocessing.harmonisation import IntensityStandard, out_of_distribution
from ..progress import StepCallback
from ..subject import UNKNOWN, Subject
from .registry import METHODS

CALIBRATION = "calibration"
# The product's label-free calibration of every method: the threshold lets through at most 1%
# of healthy validation brain voxels; the abnormality index is the mean of the top 1% z-scores.
HEALTHY_FPR = 0.01
INDEX_TOP_FRACTION = 0.01
# The healthy maps' voxel std (of the index and of normative maps) pools a Gaussian
# neighbourhood of this sigma, in voxels of the 2 mm grid (4 mm): a few dozen healthy scans
# give a noisy std voxel by voxel, and the most extreme z-scores then come from where healthy
# maps happened to agree (chosen with benchmarks/postprocessing_sweep.py, README *Methods*).
REFERENCE_SMOOTHING_SIGMA = 2.0


@runtime_checkable
class AnomalyModel(Protocol):
    """The contract of every method's model, the object its registry loader builds
    (`loader(folder, name, options)`) and `LoadedMethod` wraps.

    `predict(image, brain, subject, on_step)` takes a grid image (normalised and harmonised,
    (z, y, x)), its brain mask of the same shape, and the `Subject` the scan is of (a method
    uses the covariates it knows, and runs without the unknown ones). It returns
    (anomaly map, pseudo-healthy image): float32 arrays of the grid's shape, zero outside the
    brain. `on_step(done, total)` is called at least once (after the last step at the latest),
    with `done` never decreasing; it may raise to cancel, and `predict` lets that exception
    through. The same input with the same options gives the same output (sampling is seeded).
    A model that holds tensors also has `to(device)`, which `LoadedMethod.to` calls.
    `Testing/test_method_contract.py` holds every registered family to this contract.
    """

    def predict(self, image: np.ndarray, brain: np.ndarray, subject: Subject,
                on_step: StepCallback | None = None) -> tuple[np.ndarray, np.ndarray]: ...


MAP_KINDS = ("raw", "normative")


@dataclass
class Calibration:
    """Label-free calibration from healthy validation subjects: the anomaly-map threshold that
    at most `fpr` of their brain voxels exceed, the reference statistics of the CADD-style
    abnormality index, and the same threshold for the method's normative map (its map as a
    z-map against these statistics, postprocessing/normative.py). `map_kind` says which map
    the method outputs: "raw" or "normative"."""

    threshold: float
    fpr: float
    reference: ReferenceStatistics
    # [min, max] share of a healthy validation brain above the threshold (None: not recorded)
    healthy_flagged_range: list[float] | None = None
    normative_threshold: float | None = None
    normative_flagged_range: list[float] | None = None
    map_kind: str = "raw"
    # sigma (voxels) the reference statistics were smoothed with; 0 in calibrations made
    # before smoothing
    smoothing_sigma: float = 0.0

    @classmethod
    def from_healthy_maps(cls, maps: list[np.ndarray], masks: list[np.ndarray],
                          fpr: float = HEALTHY_FPR, top_fraction: float = INDEX_TOP_FRACTION,
                          map_kind: str = "raw",
                          smoothing_sigma: float = REFERENCE_SMOOTHING_SIGMA) -> Calibration:
        """The one calibration of every method, from its maps of healthy validation scans
        (the normative threshold needs at least three)."""
        threshold = healthy_calibrated_threshold(maps, masks, fpr)
        flagged = [float((m[mask > 0] > threshold).mean()) for m, mask in zip(maps, masks,
                                                                               strict=True)]
        calibration = cls(threshold, fpr, ReferenceStatistics.from_healthy_maps(
            maps, masks, top_fraction, smoothing_sigma), [min(flagged), max(flagged)],
            map_kind=map_kind, smoothing_sigma=smoothing_sigma)
        if len(maps) >= 3:  # leave-one-out needs two others to take statistics from
            normative, normative_flagged = normative_threshold(maps, masks, fpr, top_fraction,
                                                               smoothing_sigma)
            calibration.normative_threshold = normative
            calibration.normative_flagged_range = [min(normative_flagged),
                                                   max(normative_flagged)]
        return calibration.with_map(map_kind)

    def with_map(self, kind: str) -> Calibration:
        """This calibration with the method outputting the `kind` map."""
        if kind not in MAP_KINDS:
            raise ValueError(f"Unknown map kind {kind!r}; kinds: {', '.join(MAP_KINDS)}.")
        if kind == "normative" and self.normative_threshold is None:
            raise ModelError("This model's calibration has no normative threshold; recalibrate "
                             "it with `neuroad train` to use normative maps.")
        return replace(self, map_kind=kind)

    def output_map(self, raw: np.ndarray, brain: np.ndarray) -> np.ndarray:
        """The map the method outputs: its raw map, or its normative map."""
        if self.map_kind == "raw":
            return raw
        return normative_map(raw, self.reference, brain)

    @property
    def output_threshold(self) -> float:
        return self.threshold if self.map_kind == "raw" else self.normative_threshold

    @property
    def output_flagged_range(self) -> list[float] | None:
        return (self.healthy_flagged_range if self.map_kind == "raw"
                else self.normative_flagged_range)

    def index_zmap(self, output: np.ndarray) -> np.ndarray:
        """The z-map the abnormality index is taken over: a normative map already is one."""
        return output if self.map_kind == "normative" else zscore_map(output, self.reference)

    def save(self, folder: Path, name: str = CALIBRATION) -> None:
        """`name`.json and `name`.safetensors. The voxel statistics are stored in half
        precision and only where healthy brains were seen (a bit mask marks where), which
        keeps bundles small; the index moves by far less than its spread."""
        from safetensors.numpy import save_file

        covered = np.isfinite(self.reference.std)
        save_file({"mean": self.reference.mean[covered].astype(np.float16),
                   "std": self.reference.std[covered].astype(np.float16),
                   "covered": np.packbits(covered)}, str(folder / f"{name}.safetensors"))
        (folder / f"{name}.json").write_text(json.dumps({
            "threshold": self.threshold, "fpr": self.fpr,
            "index_mean": self.reference.index_mean, "index_std": self.reference.index_std,
            "top_fraction": self.reference.top_fraction,
            "healthy_flagged_range": self.healthy_flagged_range,
            "normative_threshold": self.normative_threshold,
            "normative_flagged_range": self.normative_flagged_range, "map": self.map_kind,
            "smoothing_sigma": self.smoothing_sigma,
            "shape": list(self.reference.std.shape)}, indent=2))

    @classmethod
    def load(cls, folder: Path, name: str = CALIBRATION) -> Calibration:
        from safetensors.numpy import load_file

        if not (folder / f"{name}.json").is_file():
            raise ModelError(f"The model in {folder} has no calibration {name!r}.")
        arrays = load_file(str(folder / f"{name}.safetensors"))
        meta = json.loads((folder / f"{name}.json").read_text())
        shape = tuple(meta["shape"])
        covered = np.unpackbits(arrays["covered"], count=int(np.prod(shape))).reshape(
            shape).astype(bool)
        mean = np.zeros(shape, np.float32)
        std = np.full(shape, np.inf, np.float32)
        mean[covered], std[covered] = arrays["mean"], arrays["std"]
        reference = ReferenceStatistics(mean, std, meta["index_mean"], meta["index_std"],
                                        meta["top_fraction"])
        return cls(meta["threshold"], meta["fpr"], reference, meta.get("healthy_flagged_range"),
                   meta.get("normative_threshold"), meta.get("normative_flagged_range"),
                   meta.get("map", "raw"), meta.get("smoothing_sigma", 0.0))


@dataclass
class Prediction:
    """A method's output on the grid: the anomaly map, the pseudo-healthy image on the input's
    own intensity scale (harmonisation undone), and what the harmonisation did and measured
    (with the out-of-distribution checks of the scan's intensities)."""

    anomaly: np.ndarray
    healthy: np.ndarray
    harmonisation: dict


@dataclass
class LoadedMethod:
    """A method ready to run on grid arrays: its model, its calibration, the intensity
    standard its model was trained on (None for a model trained without one), and the
    options the calibration was computed at where they differ from the registry's defaults
    (what the bundle's manifest records; `calibrated_options`)."""

    name: str
    contrast: str
    model: AnomalyModel
    calibration: Calibration
    standard: IntensityStandard | None = None
    calibrated_at: dict = field(default_factory=dict)

    def harmonise(self, image: np.ndarray, brain: np.ndarray) -> tuple[np.ndarray, Any, dict]:
        """The scan as the model sees it (harmonised to the model's intensity standard), the
        gain that did it (1 without a standard), and the report of what it did and measured."""
        if self.standard is None:
            return image, 1.0, {"applied": False}
        harmonised, gain = self.standard.harmonise(image, brain)
        statistics = self.standard.statistics(image, harmonised, brain, gain)
        matching = {}
        for name, statistic, ceiling, target in (
                ("noise_matching", "noise_level", self.standard.noise_ceiling,
                 self.standard.noise_ceiling),
                ("sharpness_matching", "sharpness", self.standard.sharpness_ceiling,
                 self.standard.sharpness_target)):
            matching[name] = {"ceiling": ceiling, "target": target,
                              "applied": ceiling is not None and statistics[statistic] > ceiling}
        return harmonised, gain, {
            "applied": True, "method": "intensity profile matching to the training cohort",
            "config": asdict(self.standard.config), "statistics": statistics, **matching,
            "checks": out_of_distribution(statistics, self.standard.healthy_ranges)}

    def unharmonised(self, healthy: np.ndarray, brain: np.ndarray, gain: Any) -> np.ndarray:
        """A pseudo-healthy image back on the input's intensity scale."""
        if self.standard is None:
            return healthy
        return (healthy / gain * brain).astype(np.float32)

    def run(self, image: np.ndarray, brain: np.ndarray, subject: Subject = UNKNOWN,
            on_step: StepCallback | None = None) -> Prediction:
        """Harmonise the scan to the model's intensity standard, then the model; the anomaly
        map is the calibration's output map (raw or normative). `on_step(done, total)` hears
        of the method's inner steps (diffusion sampling) and may raise to stop."""
        harmonised, gain, report = self.harmonise(image, brain)
        anomaly, healthy = self.model.predict(harmonised, brain, subject, on_step)
        return Prediction(self.calibration.output_map(anomaly, brain),
                          self.unharmonised(healthy, brain, gain), report)

    def predict(self, image: np.ndarray, brain: np.ndarray, subject: Subject = UNKNOWN,
                on_step: StepCallback | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(anomaly map, pseudo-healthy image) on the grid, computed once."""
        prediction = self.run(image, brain, subject, on_step)
        return prediction.anomaly, prediction.healthy

    def anomaly_map(self, image: np.ndarray, brain: np.ndarray,
                    subject: Subject = UNKNOWN) -> np.ndarray:
        return self.predict(image, brain, subject)[0]

    def to(self, device: str) -> LoadedMethod:
        """Move a torch method to a device (numpy methods run where they are)."""
        if hasattr(self.model, "to"):
            self.model.to(device)
        return self


Loader = Callable[[Path, str, dict], AnomalyModel]


def resolve_loader(target: str) -> Loader:
    """The function an import string "package.module:function" names; ModelError saying what
    does not resolve (a malformed string, a missing module, a missing function)."""
    module_name, _, function = target.partition(":")
    if not module_name or not function.isidentifier():
        raise ModelError(f"Method loader {target!r} is not of the form "
                         "'package.module:function'.")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is None or not (module_name + ".").startswith(error.name + "."):
            raise  # the module exists, one of its dependencies does not
        raise ModelError(f"Method loader {target!r}: there is no module {module_name}.") \
            from None
    loader = getattr(module, function, None)
    if not callable(loader):
        raise ModelError(f"Method loader {target!r}: {module_name} has no function "
                         f"{function}.")
    return loader


def method_settings(inference: dict, name: str) -> dict:
    """The inference settings a bundle's manifest records for method `name`: the settings its
    methods share, with the method's own (`inference[name]`: a bundle keeping settings per
    method, or one method recalibrated at options of its own) over them."""
    shared = {key: value for key, value in inference.items() if not isinstance(value, dict)}
    own = inference.get(name)
    return {**shared, **(own if isinstance(own, dict) else {})}


def recorded_inference(inference: dict, name: str) -> dict:
    """The settings a bundle runs method `name` with: the `inference` settings its manifest
    records for it (`method_settings`), with the options added since it was written at the
    value it ran with then (`MethodInfo.unrecorded`)."""
    return {**METHODS[name].unrecorded, **method_settings(inference, name)}


def calibrated_options(manifest: dict, name: str) -> dict:
    """The options a bundle's calibration of method `name` was computed at, where they differ
    from the registry's defaults: the bundle manifest's `inference` settings, either the
    method's own (`inference[name]`, a bundle serving several methods with settings of their
    own) or the family's shared ones, restricted to the method's registry options (see
    `recorded_inference`)."""
    inference = manifest.get("inference", {})
    if not isinstance(inference, dict):
        return {}
    recorded = recorded_inference(inference, name)
    defaults = METHODS[name].options
    return {key: value for key, value in recorded.items()
            if key in defaults and defaults[key] != value}


def load_method(name: str, folder: str | os.PathLike, options: dict | None = None
                ) -> LoadedMethod:
    """Load a trained method from its bundle folder, with options (see the registry) that
    override its defaults: the registry's loader for the method builds its model, and the
    bundle's calibration (outputting the registry's `map_kind` where it names one) and
    intensity standard come with it."""
    folder = Path(folder)
    if name not in METHODS:
        raise ModelError(f"Unknown method {name!r}; available: {', '.join(METHODS)}.")
    info = METHODS[name]
    unknown = set(options or {}) - set(info.options)
    if unknown:
        raise OptionError(f"{name} has no option {', '.join(sorted(unknown))}; its options: "
                          f"{', '.join(info.options) or 'none'}.")
    model = resolve_loader(info.loader)(folder, name, dict(options or {}))
    standard = IntensityStandard.load(folder)
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    calibration = Calibration.load(folder, info.calibration)
    if info.map_kind is not None:
        calibration = calibration.with_map(info.map_kind)
    return LoadedMethod(name, info.contrast, model, calibration, standard,
                        calibrated_options(manifest, name))

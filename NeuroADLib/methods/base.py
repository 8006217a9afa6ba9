"""What every method provides, its calibration, and loading a method by name."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import ModelError, UsageError
from ..postprocessing import ReferenceStatistics, healthy_calibrated_threshold
from ..preprocessing.harmonisation import IntensityStandard, out_of_distribution
from .registry import METHODS

CALIBRATION = "calibration"
# The product's label-free calibration of every method: the threshold lets through at most 1%
# of healthy validation brain voxels; the abnormality index is the mean of the top 1% z-scores.
HEALTHY_FPR = 0.01
INDEX_TOP_FRACTION = 0.01


@dataclass
class Calibration:
    """Label-free calibration from healthy validation subjects: the anomaly-map threshold that
    at most `fpr` of their brain voxels exceed, and the reference statistics of the CADD-style
    abnormality index."""

    threshold: float
    fpr: float
    reference: ReferenceStatistics
    # [min, max] share of a healthy validation brain above the threshold (None: not recorded)
    healthy_flagged_range: list[float] | None = None

    @classmethod
    def from_healthy_maps(cls, maps: list[np.ndarray], masks: list[np.ndarray],
                          fpr: float = HEALTHY_FPR, top_fraction: float = INDEX_TOP_FRACTION
                          ) -> Calibration:
        """The one calibration of every method, from its maps of healthy validation scans."""
        threshold = healthy_calibrated_threshold(maps, masks, fpr)
        flagged = [float((m[mask > 0] > threshold).mean()) for m, mask in zip(maps, masks,
                                                                               strict=True)]
        return cls(threshold, fpr, ReferenceStatistics.from_healthy_maps(maps, masks,
                                                                         top_fraction),
                   [min(flagged), max(flagged)])

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
        return cls(meta["threshold"], meta["fpr"], reference, meta.get("healthy_flagged_range"))


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
    """A method ready to run on grid arrays: its model, its calibration and the intensity
    standard its model was trained on (None for a model trained without one)."""

    name: str
    contrast: str
    model: object
    calibration: Calibration
    standard: IntensityStandard | None = None

    def run(self, image: np.ndarray, brain: np.ndarray, age: float | None = None,
            sex: str | None = None, on_step=None) -> Prediction:
        """Harmonise the scan to the model's intensity standard, then the model. `on_step(done,
        total)` hears of the method's inner steps (diffusion sampling) and may raise to stop."""
        if self.standard is None:
            anomaly, healthy = self.model.predict(image, brain, age, sex, on_step)
            return Prediction(anomaly, healthy, {"applied": False})
        harmonised, gain = self.standard.harmonise(image, brain)
        anomaly, healthy = self.model.predict(harmonised, brain, age, sex, on_step)
        statistics = self.standard.statistics(image, harmonised, brain, gain)
        return Prediction(anomaly, (healthy / gain * brain).astype(np.float32), {
            "applied": True, "method": "intensity profile matching to the training cohort",
            "config": asdict(self.standard.config), "statistics": statistics,
            "checks": out_of_distribution(statistics, self.standard.healthy_ranges)})

    def predict(self, image: np.ndarray, brain: np.ndarray, age: float | None = None,
                sex: str | None = None, on_step=None) -> tuple[np.ndarray, np.ndarray]:
        """(anomaly map, pseudo-healthy image) on the grid, computed once."""
        prediction = self.run(image, brain, age, sex, on_step)
        return prediction.anomaly, prediction.healthy

    def anomaly_map(self, image: np.ndarray, brain: np.ndarray, age: float | None = None,
                    sex: str | None = None) -> np.ndarray:
        return self.predict(image, brain, age, sex)[0]

    def to(self, device: str) -> LoadedMethod:
        """Move a torch method to a device (numpy methods run where they are)."""
        if hasattr(self.model, "to"):
            self.model.to(device)
        return self


def load_method(name: str, folder: str | os.PathLike, options: dict | None = None
                ) -> LoadedMethod:
    """Load a trained method from its model folder, with options (see the registry) that
    override its defaults."""
    folder = Path(folder)
    if name not in METHODS:
        raise ModelError(f"Unknown method {name!r}; available: {', '.join(METHODS)}.")
    info = METHODS[name]
    unknown = set(options or {}) - set(info.options)
    if unknown:
        raise UsageError(f"{name} has no option {', '.join(sorted(unknown))}; its options: "
                         f"{', '.join(info.options) or 'none'}.")
    if info.family == "zscore":
        from .zscore import VoxelNormativeModel

        return LoadedMethod(name, info.contrast, VoxelNormativeModel.load(folder),
                            Calibration.load(folder), IntensityStandard.load(folder))
    from ..diffusion.inpainting import InpaintingSettings
    from .cadd import load_cadd

    model = load_cadd(folder, name)
    if options:
        model.settings = InpaintingSettings(**{**vars(model.settings), **options})
    return LoadedMethod(name, info.contrast, model,
                        Calibration.load(folder, f"calibration_{name}"),
                        IntensityStandard.load(folder))

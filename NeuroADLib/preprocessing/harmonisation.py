"""Intensity harmonisation: a scan's smooth intensity profile, measured against the healthy
training cohort's mean image, divided out before any model sees it.

Measured cause (README, "Scanner robustness"): after N4 and the 99.5th-percentile scaling,
real T1 scans from other scanners differ from the IXI cohort less in their global tissue
levels than in a smooth spatial intensity profile (deep white matter and basal ganglia darker,
the vertex or the occipital pole brighter) and in their brightness scale (a few bright fat
voxels in the mask set the 99.5th percentile of the clinical demo). Both exceed the cohort's
tight per-voxel spread, so voxel-wise models read them as anomaly over 6-15% of the brain. N4
cannot remove them (it is fitted per scan with no notion of what the profile should be); the
cohort can.

The step: r = x / m, the scan's ratio to the cohort's mean image m, is smoothed into a profile
p by a normalised convolution (Gaussian of `profile_sigma_mm`) over the voxels whose ratio lies
within `outlier_window` robust standard deviations of what the profile expects there, refined
`refinements` times; then x' = x / p. Healthy tissue has r close to 1 wherever it is, so a
lesion (which departs from its surroundings) falls out of p and keeps its contrast, while a
smooth field and a global scale are removed. 1 / p is the gain, returned so that a
pseudo-healthy image goes back to the scan's own scale.

Noise matching (README, "Scan noise"): a scan noisier than every healthy training scan is
smoothed, inside its brain, until its noise level is back at the healthy maximum. A
reconstruction is smooth, so a method that compares a scan with its reconstruction reads
excess noise as anomaly everywhere; the real lesion scans here are up to twice as noisy as
IXI. The cohort's scans are never smoothed (the ceiling is their own maximum), so a model's
training data and calibration are unchanged.

Sharpness matching (README, "Scanner robustness"): a scan sharper than every healthy training
scan is smoothed first, inside its brain, until its sharpness is the healthy scans' median (a
scan at the healthy maximum still flags several times what a typical one does). The
cohort is IXI downsampled to 2 mm and resampled once more onto the grid; a 1 mm scan resampled
once keeps edges the cohort never has (the real lesion scans here have half as much edge again),
which a reconstruction, and a z-map over the cohort's tight per-voxel spread, read as anomaly
along every tissue boundary. It runs before the profile, which is measured against the cohort's
(smooth) mean image and is biased by a sharper scan's edges.

`tissue_statistics` gives each scan's grey / white matter levels and contrast for the report
and the out-of-distribution check; it does not change intensities (a grey/white piecewise
mapping on top was measured and did not help).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..postprocessing.filters import erode_brain_mask

STANDARD_JSON = "intensity_standard.json"
STANDARD_WEIGHTS = "intensity_standard.safetensors"
# The profile is measured where at least REFERENCE_COVERAGE of the training brains are and
# their mean intensity is above REFERENCE_MINIMUM (tissue, not CSF).
REFERENCE_COVERAGE = 0.5
REFERENCE_MINIMUM = 0.3
# Weight of the scan's typical ratio in its profile, against the smoothed share of measured
# voxels around a voxel (0 to 1): it matters only far from any measured voxel.
PROFILE_PRIOR_WEIGHT = 0.02
# Where the tissue statistics are measured: the template's white (grey) matter above these
# probabilities, or without a template (a grid of another kind) the voxels of the cohort's
# mean image in the top WM_CORE_QUANTILE (in the GM_CORE_QUANTILES band) of the common brain.
WM_CORE_PROBABILITY = 0.9
GM_CORE_PROBABILITY = 0.7
WM_CORE_QUANTILE = 0.55
GM_CORE_QUANTILES = (0.25, 0.5)
# The noise level is measured inside the brain eroded this many voxels (away from its edge).
NOISE_EROSION = 3
# Noise and sharpness matching smooth with a Gaussian of at most this sigma (voxels), found
# by bisection.
NOISE_MAX_SIGMA = 2.0
NOISE_BISECTIONS = 10
# Sharpness is measured on the image smoothed by this Gaussian (voxels), so that it reads the
# anatomy's edges rather than the noise (which noise matching handles).
SHARPNESS_PRESMOOTHING = 1.0


@dataclass(frozen=True)
class HarmonisationConfig:
    """The knobs of the profile matching, with the defaults chosen on the measurements in the
    README (false positives on real scans against average precision on synthetic lesions)."""

    profile_sigma_mm: float = 10.0  # smoothness of the profile (Gaussian sigma)
    outlier_window: float = 1.5  # robust standard deviations around the expected ratio
    refinements: int = 2  # re-selections of the voxels against the previous profile
    match_noise: bool = True  # smooth a scan noisier than every healthy scan down to them
    match_sharpness: bool = True  # smooth a scan sharper than every healthy scan down to them


def tissue_statistics(image: np.ndarray, brain: np.ndarray, wm_core: np.ndarray,
                      gm_core: np.ndarray) -> dict:
    """Median white- and grey-matter intensity (voxels the template gives to one tissue with
    high probability) and their ratio: the scan's tissue contrast, robust to CSF in the mask,
    a bright rim and lesions."""
    brain = np.asarray(brain, bool)
    wm, gm = (float(np.median(image[brain & core])) if (brain & core).any() else float("nan")
              for core in (wm_core, gm_core))
    return {"wm": wm, "gm": gm, "contrast_ratio": gm / wm if wm > 0 else float("nan")}


def intensity_profile(image: np.ndarray, brain: np.ndarray, reference: np.ndarray,
                      region: np.ndarray, config: HarmonisationConfig, spacing_mm: float
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(profile, the voxels that define it): the normalised convolution
    (G * (r m) + e w) / (G * m + e) of the ratio r = x / reference over m, the voxels of
    `region` inside the brain whose r lies within `outlier_window` robust standard deviations
    of what the previous profile expects there; w is their median ratio, and
    e = PROFILE_PRIOR_WEIGHT pulls the profile towards w far from any of them."""
    measured = np.asarray(region, bool) & np.asarray(brain, bool)
    if measured.sum() < 100:
        raise ValueError("the brain mask covers too little of the cohort's brain to harmonise")
    ratio = np.where(measured, np.asarray(image, np.float32) / np.maximum(reference, 1e-6), 0)
    sigma = config.profile_sigma_mm / spacing_mm
    profile = np.full(ratio.shape, float(np.median(ratio[measured])), np.float32)
    for _ in range(config.refinements + 1):
        relative = ratio[measured] / profile[measured]
        centre = float(np.median(relative))
        spread = 1.4826 * float(np.median(np.abs(relative - centre))) or 1e-3
        used = measured.copy()
        used[measured] = np.abs(relative - centre) <= config.outlier_window * spread
        typical = float(np.median(ratio[used]))
        weight = ndimage.gaussian_filter(used.astype(np.float32), sigma)
        total = ndimage.gaussian_filter(np.where(used, ratio, 0).astype(np.float32), sigma)
        profile = (total + PROFILE_PRIOR_WEIGHT * typical) / (weight + PROFILE_PRIOR_WEIGHT)
    return profile.astype(np.float32), used


def noise_level(image: np.ndarray, brain: np.ndarray) -> float:
    """A scan's noise: the robust standard deviation (1.4826 x the median absolute deviation)
    of its high frequencies x - G_1(x) (a Gaussian of one voxel) inside the eroded brain. The
    median ignores the few voxels on tissue edges, so that anatomy counts little."""
    return _detail_level(image, erode_brain_mask(brain, NOISE_EROSION))


def _detail_level(image: np.ndarray, inner: np.ndarray) -> float:
    if not inner.any():
        return float("nan")
    image = np.asarray(image, np.float32)
    detail = (image - ndimage.gaussian_filter(image, 1.0))[inner]
    return float(1.4826 * np.median(np.abs(detail - np.median(detail))))


def smooth_in_brain(image: np.ndarray, brain: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian of `sigma` voxels inside the brain only (a normalised convolution, so that
    the zeros outside do not darken its edge); zero outside."""
    inside = np.asarray(brain, np.float32)
    smoothed = ndimage.gaussian_filter(np.asarray(image, np.float32) * inside, sigma)
    weight = ndimage.gaussian_filter(inside, sigma)
    return np.where(inside > 0, smoothed / np.maximum(weight, 1e-3), 0).astype(np.float32)


def sharpness(image: np.ndarray, brain: np.ndarray) -> float:
    """A scan's sharpness: the mean gradient magnitude (per voxel) of the image smoothed by
    SHARPNESS_PRESMOOTHING voxels inside the eroded brain, over the median intensity of the
    brain. Free of the intensity scale and of a smooth bias, so that it reads a raw scan as
    well as a harmonised one. The mean (a total variation) falls as the scan is smoothed, which
    matching needs; a median of gradients can rise, as a blurred edge covers more voxels."""
    brain = np.asarray(brain, bool)
    inner = erode_brain_mask(brain, NOISE_EROSION)
    if not inner.any():
        return float("nan")
    return _edge_level(np.asarray(image, np.float32), inner, float(np.median(image[brain])))


def _edge_level(image: np.ndarray, inner: np.ndarray, scale: float) -> float:
    smoothed = ndimage.gaussian_filter(image, SHARPNESS_PRESMOOTHING)
    magnitude = np.sqrt(sum(np.square(g) for g in np.gradient(smoothed)))
    return float(np.mean(magnitude[inner]) / scale) if scale > 0 else float("nan")


def match_noise(image: np.ndarray, brain: np.ndarray, ceiling: float
                ) -> tuple[np.ndarray, float]:
    """(image, sigma): the image unchanged (sigma 0) when its noise level is at most
    `ceiling`, otherwise smoothed inside the brain by the smallest Gaussian (to 1/2^10 of
    NOISE_MAX_SIGMA, by bisection: the level falls as sigma grows) that brings it to the
    ceiling, or by NOISE_MAX_SIGMA when none up to it does."""
    inner = erode_brain_mask(brain, NOISE_EROSION)
    return _smoothed_to(image, brain, ceiling, lambda x: _detail_level(x, inner))


def match_sharpness(image: np.ndarray, brain: np.ndarray, ceiling: float,
                    target: float | None = None) -> tuple[np.ndarray, float]:
    """(image, sigma): the image unchanged (sigma 0) when its `sharpness` is at most
    `ceiling`, otherwise smoothed inside the brain by the smallest Gaussian that brings it to
    `target` (the ceiling when None), as `match_noise` does. Sharpness is measured against the
    unsmoothed brain's median intensity, which smoothing inside the brain hardly moves."""
    brain = np.asarray(brain, bool)
    inner = erode_brain_mask(brain, NOISE_EROSION)
    if not inner.any():
        return image, 0.0
    scale = float(np.median(np.asarray(image, np.float32)[brain]))
    return _smoothed_to(image, brain, ceiling, lambda x: _edge_level(x, inner, scale), target)


def _smoothed_to(image: np.ndarray, brain: np.ndarray, ceiling: float,
                 level: Callable[[np.ndarray], float], target: float | None = None
                 ) -> tuple[np.ndarray, float]:
    """Unchanged (sigma 0) when `level` is at most `ceiling`; otherwise the image smoothed
    inside the brain by the smallest Gaussian that brings `level` to `target` (the ceiling by
    default; bisection), with its sigma."""
    image = np.asarray(image, np.float32)
    if not level(image) > ceiling:
        return image, 0.0
    target = ceiling if target is None else target
    low, high = 0.0, NOISE_MAX_SIGMA
    for _ in range(NOISE_BISECTIONS):
        middle = (low + high) / 2
        if level(smooth_in_brain(image, brain, middle)) > target:
            low = middle
        else:
            high = middle
    return smooth_in_brain(image, brain, high), high


@dataclass
class IntensityStandard:
    """The training cohort's mean image and the region where a scan's profile is measured
    against it, the white- and grey-matter cores of the tissue statistics, and the healthy
    range of each statistic a scan is checked against."""

    reference: np.ndarray
    region: np.ndarray
    wm_core: np.ndarray
    gm_core: np.ndarray
    spacing_mm: float
    config: HarmonisationConfig = field(default_factory=HarmonisationConfig)
    healthy_ranges: dict = field(default_factory=dict)
    healthy_medians: dict = field(default_factory=dict)

    @classmethod
    def fit(cls, images: list[np.ndarray], masks: list[np.ndarray], spacing_mm: float,
            priors: dict[str, np.ndarray] | None = None,
            config: HarmonisationConfig | None = None) -> IntensityStandard:
        """The mean of healthy training scans (each voxel over the brains that cover it). The
        tissue cores come from the template's probability maps on the grid (`priors`,
        templates.template_tissue_priors), or without them from the mean image."""
        config = config or HarmonisationConfig()
        masks = [np.asarray(m, bool) for m in masks]
        coverage = np.mean(masks, axis=0)
        total = np.sum([np.where(m, image, 0) for image, m in zip(images, masks, strict=True)],
                       axis=0)
        mean_image = (total / np.maximum(coverage * len(masks), 1)).astype(np.float32)
        region = (coverage >= REFERENCE_COVERAGE) & (mean_image > REFERENCE_MINIMUM)
        reference = np.where(region, mean_image, 0).astype(np.float16).astype(np.float32)
        wm_core, gm_core = (_cores_from_priors(priors) if priors is not None
                            else _cores_from_image(mean_image, coverage == 1))
        return cls(reference, region, wm_core, gm_core, spacing_mm, config)

    @property
    def noise_ceiling(self) -> float | None:
        """The healthy scans' highest noise level, above which a scan is smoothed; None when
        noise matching is off or the standard has no noise range (a bundle built before it)."""
        if not self.config.match_noise or "noise_level" not in self.healthy_ranges:
            return None
        return float(self.healthy_ranges["noise_level"][1])

    @property
    def sharpness_ceiling(self) -> float | None:
        """The healthy scans' highest sharpness, above which a scan is smoothed; None when
        sharpness matching is off or the standard has no sharpness range."""
        if not self.config.match_sharpness or "sharpness" not in self.healthy_ranges:
            return None
        return float(self.healthy_ranges["sharpness"][1])

    @property
    def sharpness_target(self) -> float | None:
        """What a scan above the sharpness ceiling is smoothed to: the healthy scans' median
        sharpness (the ceiling for a standard without it)."""
        return self.healthy_medians.get("sharpness", self.sharpness_ceiling)

    def harmonise(self, image: np.ndarray, brain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(harmonised image, gain): x / p inside the brain, zero outside; a scan sharper than
        the healthy ceiling smoothed to the healthy median before the profile, and one noisier
        than the healthy ceiling smoothed to it after; gain = 1 / p."""
        brain = np.asarray(brain, bool)
        if self.sharpness_ceiling is not None:
            image, _ = match_sharpness(image, brain, self.sharpness_ceiling,
                                       self.sharpness_target)
        profile, _ = intensity_profile(image, brain, self.reference, self.region, self.config,
                                       self.spacing_mm)
        gain = np.where(brain, 1.0 / profile, 1.0).astype(np.float32)
        harmonised = (np.asarray(image, np.float32) * gain * brain).astype(np.float32)
        if self.noise_ceiling is not None:
            harmonised, _ = match_noise(harmonised, brain, self.noise_ceiling)
        return harmonised, gain

    def statistics(self, image: np.ndarray, harmonised: np.ndarray, brain: np.ndarray,
                   gain: np.ndarray) -> dict:
        """What the out-of-distribution check compares with the healthy cohort: the scan's
        white-matter level before harmonisation, its grey/white contrast after, how much
        correction it needed (the median gain, and the spread of the gain over the brain), its
        noise level on the cohort's scale, before noise matching, and its sharpness, before
        sharpness matching (`image` is the scan as given)."""
        brain = np.asarray(brain, bool)
        before = tissue_statistics(image, brain, self.wm_core, self.gm_core)
        low, median, high = np.percentile(gain[brain], [5.0, 50.0, 95.0])
        return {"white_matter_level": before["wm"],
                "contrast_ratio": tissue_statistics(harmonised, brain, self.wm_core,
                                                    self.gm_core)["contrast_ratio"],
                "gain_median": float(median), "gain_spread": float(high - low),
                "noise_level": noise_level(np.asarray(image, np.float32) * gain * brain, brain),
                "sharpness": sharpness(image, brain)}

    def with_healthy_ranges(self, ranges: dict, medians: dict | None = None
                            ) -> IntensityStandard:
        """The standard with these healthy ranges, and medians when given."""
        return replace(self, healthy_ranges=ranges,
                       healthy_medians=self.healthy_medians if medians is None else medians)

    def with_config(self, **changes) -> IntensityStandard:
        """The standard with some of its HarmonisationConfig knobs changed."""
        return replace(self, config=replace(self.config, **changes))

    def save(self, folder: str | os.PathLike) -> None:
        """Only the reference inside its region, in half precision, with bit masks."""
        from safetensors.numpy import save_file

        folder = Path(folder)
        save_file({"reference": self.reference[self.region].astype(np.float16),
                   "region": np.packbits(self.region), "wm_core": np.packbits(self.wm_core),
                   "gm_core": np.packbits(self.gm_core)}, str(folder / STANDARD_WEIGHTS))
        (folder / STANDARD_JSON).write_text(json.dumps(
            {"method": "intensity profile matching to the cohort's mean image",
             "config": asdict(self.config), "spacing_mm": self.spacing_mm,
             "shape": list(self.region.shape), "healthy_ranges": self.healthy_ranges,
             "healthy_medians": self.healthy_medians},
            indent=2))

    @classmethod
    def load(cls, folder: str | os.PathLike) -> IntensityStandard | None:
        """The standard in a bundle folder, or None for a bundle without one."""
        from safetensors.numpy import load_file

        folder = Path(folder)
        if not (folder / STANDARD_JSON).is_file():
            return None
        meta = json.loads((folder / STANDARD_JSON).read_text())
        arrays = load_file(str(folder / STANDARD_WEIGHTS))
        shape = tuple(meta["shape"])
        region, wm_core, gm_core = (
            np.unpackbits(arrays[key], count=int(np.prod(shape))).reshape(shape).astype(bool)
            for key in ("region", "wm_core", "gm_core"))
        reference = np.zeros(shape, np.float32)
        reference[region] = arrays["reference"]
        return cls(reference, region, wm_core, gm_core, float(meta["spacing_mm"]),
                   HarmonisationConfig(**meta["config"]), meta.get("healthy_ranges", {}),
                   meta.get("healthy_medians", {}))


def _cores_from_priors(priors: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(white-matter core, grey-matter core) from the template's probability maps."""
    return (np.asarray(priors["wm"]) > WM_CORE_PROBABILITY,
            np.asarray(priors["gm"]) > GM_CORE_PROBABILITY)


def _cores_from_image(mean_image: np.ndarray, common: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The same from the cohort's mean image, inside every training brain."""
    values = mean_image[common]
    low, high = np.quantile(values, GM_CORE_QUANTILES)
    return (common & (mean_image >= np.quantile(values, WM_CORE_QUANTILE)),
            common & (mean_image >= low) & (mean_image <= high))


def healthy_ranges(statistics: list[dict]) -> dict:
    """[min, max] of each statistic over healthy scans."""
    return {key: [float(min(s[key] for s in statistics)), float(max(s[key] for s in statistics))]
            for key in statistics[0]}


def healthy_medians(statistics: list[dict]) -> dict:
    """The median of each statistic over healthy scans (what is typical, where the ranges say
    what is possible)."""
    return {key: float(np.median([s[key] for s in statistics])) for key in statistics[0]}


def out_of_distribution(statistics: dict, ranges: dict) -> list[dict]:
    """One check per statistic with a healthy range: its value, the range and whether it lies
    inside. A value outside says the scan differs from every healthy training scan in that
    respect, so that flagged voxels may be acquisition rather than disease."""
    checks = []
    for key, (low, high) in ranges.items():
        if key not in statistics:
            continue
        value = float(statistics[key])
        checks.append({"statistic": key, "value": value, "healthy_range": [low, high],
                       "inside": bool(low <= value <= high)})
    return checks

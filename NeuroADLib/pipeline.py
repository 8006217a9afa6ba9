"""One scan through NeuroAD: native scan -> model grid -> method(s) -> results on the scan.

For each method: `pseudo_healthy.nii.gz` (the method's healthy expectation inside the brain, in
the scan's intensity units; the scan itself outside the brain), `anomaly_map.nii.gz`,
`anomaly_mask.nii.gz` (the map above the method's healthy-calibrated threshold) and
`report.json`, all with exactly the input's geometry, plus `summary.png`. Several methods share
one preprocessing; each writes into its own sub-folder when more than one is asked for, and the
run also writes `consensus.nii.gz`: at each voxel, how many methods flag it at their calibrated
thresholds (with `consensus.json`, the volume flagged by at least k of them).
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from . import __version__
from .device import is_out_of_memory, select_device
from .errors import InputError
from .guards import check_run
from .hashing import sha256
from .methods import LoadedMethod, load_method
from .methods.registry import changed_options
from .models import find_bundle, verify_bundle
from .outputs import atomic_output_folder, check_writable
from .postprocessing import abnormality_index, binarize, index_zscore
from .preprocessing import PreprocessResult, grid_to_native, preprocess
from .preprocessing.pipeline import PREPROCESS_STEPS
from .progress import Progress
from .qc import orthogonal_slices
from .subject import SEXES, Subject
from .volumes import geometry_of, read_volume, write_volume


def check_covariates(age: float | None, sex: str | None) -> Subject:
    """The user's age and sex as the Subject the methods see; both required, the age 0-120."""
    if age is None:
        raise InputError("Age is required (years, 0-120): the models are normative for age.")
    if not np.isfinite(age) or not 0 <= age <= 120:
        raise InputError(f"Age {age} is outside 0-120 years.")
    if sex not in SEXES:
        raise InputError(f"Sex must be F or M, not {sex!r}.")
    return Subject(float(age), sex)


@dataclass
class PreparedScan:
    """A scan read and brought onto the model grid: what the methods need and what maps their
    results back. A batch on a cluster prepares scans on CPU workers and sends them, pickled,
    to the workers that run the methods."""

    case: PreprocessResult
    input_info: dict
    preprocess_s: float

    @property
    def native(self) -> sitk.Image:
        return self.case.native

    @property
    def grid_image(self) -> np.ndarray:
        return sitk.GetArrayFromImage(self.case.image)

    @property
    def brain(self) -> np.ndarray:
        return sitk.GetArrayFromImage(self.case.brain_mask) > 0


def run(
    source: str | os.PathLike,
    age: float,
    sex: str,
    methods: list[str],
    out: str | os.PathLike,
    brain_mask: str | os.PathLike | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    loaded_methods: dict | None = None,
    device: str = "auto",
    options: dict[str, dict] | None = None,
    staging_dir: str | os.PathLike | None = None,
) -> dict[str, dict]:
    """Run methods on one scan and write their outputs; returns each method's report.
    `progress` hears of every step and may cancel between them (no outputs are left then);
    `loaded_methods` (see `load_methods`) lets a persistent worker reuse loaded models;
    `device` is auto / cpu / cuda, and a CUDA out-of-memory error reruns the method on the CPU
    (the report says so); `options` maps a method name to options overriding its defaults
    (see methods.registry); `staging_dir` is where the outputs are assembled before they
    appear whole (default: beside `out`)."""
    subject = check_covariates(age, sex)
    options = check_run(source, methods, brain_mask, options)  # guards before any work
    select_device(device)  # refuse an impossible device before any work
    check_writable(out)
    progress = progress or Progress()
    progress.total = run_steps(methods)
    progress.step("load models")
    start = time.perf_counter()
    loaded = load_methods(methods, options, loaded_methods)
    load_s = time.perf_counter() - start
    scan = prepare_scan(source, brain_mask, seed, progress)
    return run_methods(scan, loaded, subject, out, progress, device, options,
                       {"load_models": load_s}, staging_dir)


def run_steps(methods: list[str]) -> int:
    """The progress steps of a run: loading, preprocessing, and three per method."""
    return 1 + PREPROCESS_STEPS + 3 * len(methods)


def load_methods(methods: list[str], options: dict[str, dict],
                 cache: dict | None = None) -> dict[str, tuple]:
    """name -> (verified bundle, loaded method); `cache`, keyed by name and options, keeps
    them for the next scan (a persistent worker, a cluster worker)."""
    loaded = {}
    for name in methods:
        cache_key = (name, json.dumps(options.get(name, {}), sort_keys=True))
        if cache is not None and cache_key in cache:
            loaded[name] = cache[cache_key]
            continue
        bundle = find_bundle(name)
        verify_bundle(bundle)
        loaded[name] = (bundle, load_method(name, bundle.folder, options.get(name)))
        if cache is not None:
            cache[cache_key] = loaded[name]
    return loaded


def prepare_scan(source: str | os.PathLike, brain_mask: str | os.PathLike | None = None,
                 seed: int = 0, progress: Progress | None = None) -> PreparedScan:
    """Read the scan and preprocess it onto the model grid (the CPU part of a run)."""
    start = time.perf_counter()
    native = read_volume(source)
    case = preprocess(native, brain_mask=brain_mask, seed=seed, progress=progress)
    input_info = {"path": str(source), "geometry": geometry_of(native),
                  "sha256": sha256(Path(source)) if Path(source).is_file() else ""}
    return PreparedScan(case, input_info, time.perf_counter() - start)


def run_methods(scan: PreparedScan, loaded: dict[str, tuple], subject: Subject,
                out: str | os.PathLike, progress: Progress, device: str = "auto",
                options: dict[str, dict] | None = None, timings: dict | None = None,
                staging_dir: str | os.PathLike | None = None) -> dict[str, dict]:
    """The loaded methods on a prepared scan, their outputs written whole into `out` (or not
    at all); returns each method's report."""
    options = options or {}
    timings = {**(timings or {}), "preprocess": scan.preprocess_s}
    grid_image, brain = scan.grid_image, scan.brain
    reports, masks = {}, {}
    with atomic_output_folder(out, staging_dir) as staging:
        for name, (bundle, method) in loaded.items():
            folder = staging / name if len(loaded) > 1 else staging
            folder.mkdir(exist_ok=True)
            reports[name], masks[name] = _run_method(
                method, bundle, scan.case, scan.native, grid_image, brain, subject, folder,
                dict(timings), scan.input_info, progress, device, options.get(name, {}))
        if len(masks) > 1:
            write_consensus(masks, scan.native, staging)
    return reports


def write_consensus(masks: dict[str, sitk.Image], native: sitk.Image, folder: Path) -> dict:
    """consensus.nii.gz (uint8: how many of the methods flag each voxel, on the scan's
    geometry) and consensus.json (the methods, and the volume flagged by at least k of them,
    k = 1 ... all)."""
    count = sum((sitk.GetArrayFromImage(mask) > 0).astype(np.uint8) for mask in masks.values())
    image = sitk.GetImageFromArray(count.astype(np.uint8))
    image.CopyInformation(native)
    write_volume(image, folder / "consensus.nii.gz")
    voxel_ml = float(np.prod(native.GetSpacing())) / 1000
    summary = {"methods": list(masks),
               "rule": "voxels above each method's healthy-calibrated threshold, counted",
               "volume_ml_flagged_by_at_least": {
                   str(k): float((count >= k).sum() * voxel_ml)
                   for k in range(1, len(masks) + 1)}}
    (folder / "consensus.json").write_text(json.dumps(summary, indent=2))
    return summary


@dataclass
class MethodOutput:
    """What one method made of one scan, on the grid, ready to be written: its map, its
    pseudo-healthy image, its segmentation with the report of the threshold that made it, what
    the harmonisation did, where it ran, method-specific report fields, and the map the
    abnormality index is taken over where it is not `anomaly` (None: `anomaly`), for a map
    that is not on the footing of the calibration's healthy statistics."""

    anomaly: np.ndarray
    healthy: np.ndarray
    segmentation: np.ndarray
    threshold: dict
    harmonisation: dict
    device: str
    extra: dict = field(default_factory=dict)
    index_map: np.ndarray | None = None


def predict_on_device(method: LoadedMethod, predict, progress: Progress,
                      device_preference: str):
    """`predict(method)` on the chosen device; a CUDA out-of-memory error runs it again on
    the CPU. Returns (its result, the device used)."""
    device = select_device(device_preference)
    try:
        return predict(method.to(device)), device
    except Exception as error:
        if not is_out_of_memory(error):
            raise
    progress.emit({"event": "log", "message": f"{method.name}: CUDA ran out of memory; "
                   "running again on the CPU (slower)."})
    return predict(method.to("cpu")), "cpu (after CUDA out of memory)"


def _run_method(method: LoadedMethod, bundle, case, native: sitk.Image, grid_image: np.ndarray,
                brain: np.ndarray, subject: Subject, folder: Path, timings: dict,
                input_info: dict, progress: Progress, device_preference: str,
                options: dict) -> tuple[dict, sitk.Image]:
    """One method's outputs in `folder`; returns its report and its anomaly mask on the
    scan."""
    progress.step(f"{method.name}: anomaly map")
    start = time.perf_counter()
    prediction, device = predict_on_device(
        method, lambda m: m.run(grid_image, brain, subject, progress.substep), progress,
        device_preference)
    timings["method"] = time.perf_counter() - start
    threshold = method.calibration.output_threshold
    output = MethodOutput(prediction.anomaly, prediction.healthy,
                          binarize(prediction.anomaly, threshold, brain),
                          threshold_report(method, threshold, options),
                          prediction.harmonisation, device)
    return write_method_outputs(method, bundle, case, native, brain, subject, folder, timings,
                                input_info, progress, device_preference, options, output)


def write_method_outputs(method: LoadedMethod, bundle, case, native: sitk.Image,
                         brain: np.ndarray, subject: Subject, folder: Path, timings: dict,
                         input_info: dict, progress: Progress, device_preference: str,
                         options: dict, output: MethodOutput) -> tuple[dict, sitk.Image]:
    """A method's result on one scan written into `folder` on the scan's own geometry
    (pseudo-healthy image, map, mask, summary picture, report); returns the report and the
    mask on the scan."""
    progress.step(f"{method.name}: back to the scan")
    start = time.perf_counter()
    anomaly, healthy, segmentation = output.anomaly, output.healthy, output.segmentation
    index_map = anomaly if output.index_map is None else output.index_map
    index = abnormality_index(method.calibration.index_zmap(index_map), brain,
                              method.calibration.reference.top_fraction)
    native_map = grid_to_native(_on_grid(anomaly, case.image), case.template_to_native, native)
    native_mask = grid_to_native(_on_grid(segmentation.astype(np.uint8), case.image),
                                 case.template_to_native, native, kind="mask")
    pseudo_image = brain_on_scan(case, native, healthy)
    timings["to_native"] = time.perf_counter() - start

    progress.step(f"{method.name}: writing")
    write_volume(pseudo_image, folder / "pseudo_healthy.nii.gz")
    write_volume(native_map, folder / "anomaly_map.nii.gz")
    write_volume(native_mask, folder / "anomaly_mask.nii.gz")
    _summary_picture(native, native_map, native_mask, folder / "summary.png",
                     f"{method.name}  age {subject.age:g}  sex {subject.sex}")
    mask_array = sitk.GetArrayFromImage(native_mask) > 0
    _, lesions = ndimage.label(mask_array, structure=np.ones((3, 3, 3)))
    report = {
        "neuroad_version": __version__,
        "input": input_info,
        "covariates": {"age": subject.age, "sex": subject.sex},
        "method": method.name,
        "options": options,
        "model": {"id": bundle.id, "version": bundle.manifest.get("version", ""),
                  "folder": str(bundle.folder),
                  "sha256": {k: v["sha256"] for k, v in bundle.manifest["files"].items()},
                  **({"benchmark": verdict} if (verdict := benchmark_verdict(
                      bundle.manifest, method.name, method.calibration.map_kind)) else {})},
        **({"anomaly_map": _map_description(bundle.manifest["anomaly_maps"][method.name],
                                            method.model)}
           if method.name in bundle.manifest.get("anomaly_maps", {}) else {}),
        "device": {"used": output.device, "asked": device_preference,
                   "platform": platform.platform()},
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "threshold": output.threshold,
        "abnormality_index": index,
        "abnormality_index_z": index_zscore(index, method.calibration.reference),
        "lesions": {"count": int(lesions),
                    "volume_ml": float(mask_array.sum() * np.prod(native.GetSpacing()) / 1000)},
        "harmonisation": output.harmonisation,
        "out_of_distribution": out_of_distribution_report(
            output.harmonisation, float(segmentation.sum() / max(brain.sum(), 1)),
            method.calibration),
        "preprocessing": case.report,
        **output.extra,
        "outputs": ["pseudo_healthy.nii.gz", "anomaly_map.nii.gz", "anomaly_mask.nii.gz",
                    "summary.png"],
    }
    (folder / "report.json").write_text(json.dumps(report, indent=2, default=float))
    return report, native_mask


# NeuroAD's bar for every method: more AP than zscore at <= 1% healthy false positives (to the
# 0.1% a leave-one-out estimate over healthy scans is reported at).
HEALTHY_FPR_BAR = 0.01


def benchmark_verdict(manifest: dict, method: str, map_kind: str) -> dict | None:
    """What the bundle's recorded benchmark (manifest `benchmark`, benchmarks/record_figures.py)
    says of the method's map against zscore's on the same synthetic cases: NeuroAD's bar is a
    higher AP at <= 1% healthy false positives. None when the bundle records no figures."""
    benchmark = manifest.get("benchmark", {})
    figures = benchmark.get("figures", {}).get(method, {}).get(map_kind)
    baseline = benchmark.get("zscore_on_the_same_cases", {}).get("zscore", {}).get("raw")
    if not figures or not baseline:
        return None
    meets = bool(figures["ap"] > baseline["ap"]
                 and round(figures["healthy_fpr"], 3) <= HEALTHY_FPR_BAR)
    return {"synthetic_ap": figures["ap"], "zscore_synthetic_ap": baseline["ap"],
            "healthy_fpr": figures["healthy_fpr"], "meets_the_zscore_bar": meets,
            "summary": f"{'above' if meets else 'below'} the zscore baseline on NeuroAD's "
                       f"benchmark: AP {figures['ap']:.3f} against {baseline['ap']:.3f}",
            "cases": benchmark.get("cases", "")}


def out_of_distribution_report(harmonisation: dict, flagged_fraction: float,
                               calibration) -> dict:
    """The scan against the healthy cohort: each intensity statistic and the flagged share of
    the brain with its healthy range, and a warning in words for each one outside, so that a
    user does not read acquisition differences as disease."""
    checks = list(harmonisation.get("checks", []))
    if calibration.output_flagged_range is not None:
        low, high = calibration.output_flagged_range
        checks.append({"statistic": "flagged_fraction", "value": flagged_fraction,
                       "healthy_range": [low, high], "inside": flagged_fraction <= high})
    warnings = [_warning(check) for check in checks if not check["inside"]]
    return {"checks": checks, "warnings": warnings, "in_distribution": not warnings}


_WHAT = {"white_matter_level": "white-matter intensity before harmonisation",
         "contrast_ratio": "grey/white-matter contrast ratio",
         "gain_median": "intensity correction needed (median gain)",
         "gain_spread": "spatial intensity correction needed (gain spread, 5th-95th pct)",
         "noise_level": "noise level (smoothed to the healthy maximum before the model)",
         "sharpness": "sharpness, the edge strength of the anatomy (smoothed to the healthy "
                      "maximum before a reconstruction method)",
         "flagged_fraction": "share of the brain above the threshold"}


def _warning(check: dict) -> str:
    low, high = check["healthy_range"]
    what = _WHAT.get(check["statistic"], check["statistic"])
    if check["statistic"] == "flagged_fraction":
        return (f"{check['value']:.1%} of the brain is above the threshold, where healthy "
                f"validation scans had {low:.1%}-{high:.1%}: part of it may come from the "
                "acquisition (scanner, protocol, slice thickness) rather than disease.")
    return (f"{what} {check['value']:.3f} is outside the healthy training scans' range "
            f"{low:.3f}-{high:.3f}: this scan differs from the training cohort in its "
            "acquisition; read the map with care.")


def threshold_report(method: LoadedMethod, threshold: float, options: dict) -> dict:
    """The threshold, its rule and whether it holds: the calibration was computed at the
    bundle's options (the method's defaults unless the bundle records others), so other
    options (a longer chain, another percentile) keep the threshold but not its healthy
    false-positive guarantee."""
    changed = changed_options(method.name, options, method.calibrated_at)
    report = {"value": threshold, "map": method.calibration.map_kind,
              "rule": f"healthy-calibrated: at most "
              f"{method.calibration.fpr:.1%} of healthy validation brain voxels above",
              "calibrated_at_these_options": not changed}
    if changed:
        report["note"] = (f"calibrated at the bundle's options; with {changed} the healthy "
                          "false-positive rate may differ")
    return report


def brain_on_scan(case: PreprocessResult, native: sitk.Image, grid_image: np.ndarray
                  ) -> sitk.Image:
    """An image of the grid (on the grid's normalised intensities) on the scan's geometry and
    intensity scale inside the scan's brain, the scan itself elsewhere."""
    scale = case.report["normalisation"]["scale"]
    moved = grid_to_native(_on_grid(grid_image * scale, case.image), case.template_to_native,
                           native)
    brain_native = sitk.GetArrayFromImage(case.native_brain_mask) > 0
    merged = np.where(brain_native, sitk.GetArrayFromImage(moved),
                      sitk.GetArrayFromImage(native)).astype(np.float32)
    image = sitk.GetImageFromArray(merged)
    image.CopyInformation(native)
    return image


def change_on_scan(case: PreprocessResult, native: sitk.Image, change: np.ndarray
                   ) -> sitk.Image:
    """A change computed on the grid (normalised intensities) on the scan's geometry and
    intensity scale (zero outside the grid's brain)."""
    scale = case.report["normalisation"]["scale"]
    return grid_to_native(_on_grid(change * scale, case.image), case.template_to_native,
                          native)


def _on_grid(array: np.ndarray, like: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(np.asarray(array))
    image.CopyInformation(like)
    return image


def _map_description(described: dict, model: object) -> dict:
    """The bundle's description of a method's map, with the formula the model runs now where
    it can say (options may change its post-processing)."""
    formula = getattr(model, "map_formula", None)
    return {**described, "formula": formula} if isinstance(formula, str) else described


def _summary_picture(native: sitk.Image, anomaly: sitk.Image, mask: sitk.Image, path: Path,
                     title: str) -> None:
    """Input with the anomaly mask outline (top) and the anomaly map (bottom)."""
    from PIL import Image, ImageDraw

    top = orthogonal_slices(native, mask)
    bottom = orthogonal_slices(anomaly, mask)
    width = max(top.shape[1], bottom.shape[1])
    strips = [np.pad(s, ((0, 0), (0, width - s.shape[1]), (0, 0))) for s in (top, bottom)]
    picture = Image.new("RGB", (width, top.shape[0] + bottom.shape[0] + 14))
    picture.paste(Image.fromarray(np.concatenate(strips, axis=0)), (0, 14))
    ImageDraw.Draw(picture).text((2, 1), title, fill=(255, 255, 0))
    picture.save(path)

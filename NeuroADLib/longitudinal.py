"""Several visits of one patient through NeuroAD (the longitudinal report, sections 3.2.2-3.2.3):
each visit on the model grid, the follow-ups rigidly aligned to the first visit, each visit's
SDM + FAM score fused with the other visits' by LAFM, and all visits segmented together by the
per-patient Yen rule.

`run_visits` writes `visit1/`, `visit2/`, ... (each with the usual pseudo-healthy image,
anomaly map, anomaly mask and report on that visit's own geometry) and `summary.png`, the
visits side by side. The mask is the Yen segmentation (no labels, eq. 3.9); the report also
gives the healthy-calibrated threshold of the map, which stays available.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from .device import select_device
from .errors import InputError, OptionError
from .guards import check_run
from .methods.registry import LONGITUDINAL_METHODS
from .methods.sdm import SDMScores
from .outputs import atomic_output_folder, check_writable
from .pipeline import (
    MethodOutput,
    PreparedScan,
    check_covariates,
    load_methods,
    predict_on_device,
    prepare_scan,
    threshold_report,
    write_method_outputs,
)
from .postprocessing import (
    erode_brain_mask,
    max_score,
    mean_score,
    quantile_mean,
    top_k_mean,
)
from .postprocessing.temporal import YenSegmentation, lafm, yen_segmentation
from .preprocessing.visits import from_first, into_first, rigid_to_first
from .progress import Progress
from .subject import Subject

YEN_RULE = ("Yen's threshold of the patient's min-max normalised scores over all visits, "
            "intersected with Yen's threshold of the pixel distance inside that mask (the "
            "longitudinal report, eq. 3.9); no labels. `value` is the score threshold on the "
            "map's scale (the map above it is the mask before the pixel-distance condition)")
# The healthy statistics behind the abnormality index are of single-visit SDM + FAM maps; a
# LAFM-fused map damps what the other visits do not share, so its index would read below
# every healthy subject's.
INDEX_OVER = "this visit's SDM + FAM map before LAFM (the healthy statistics' footing)"


@dataclass
class FusedVisits:
    """A patient's visits read together, each on its own grid: the fused, post-processed
    score maps, the post-processed pixel distances, the per-patient Yen segmentation, and
    whether LAFM ran (it needs two visits)."""

    anomaly: list[np.ndarray]
    pixel: list[np.ndarray]
    segmentation: YenSegmentation
    lafm_applied: bool


@dataclass
class ImputedVisit:
    """A visit TDM imputed between two real ones, used as an LAFM reference only: its age, the
    age of the visit it was imputed from, the real visit whose grid it lies on (0-based), and
    the model's unfiltered maps of it."""

    age: float
    from_age: float
    frame: int
    scores: SDMScores


@dataclass
class VisitRun:
    """The model's pass over one visit: its unfiltered maps and pseudo-healthy image, the
    harmonisation gain and report, the device it ran on, and how long it took."""

    scores: SDMScores
    gain: Any
    harmonisation: dict
    device: str
    seconds: float


def fuse_visits(scores: Sequence[np.ndarray], pixels: Sequence[np.ndarray],
                brains: Sequence[np.ndarray], times: Sequence[float], model,
                grids: Sequence[sitk.Image] = (),
                transforms: Sequence[sitk.Transform | None] = (), fuse: bool = True,
                references: Sequence[ImputedVisit] = ()) -> FusedVisits:
    """Each visit's unfiltered score map fused with the others' in the first visit's frame
    (LAFM, eq. 3.7-3.8), moved back to its own grid, post-processed as the single-visit map
    (`model.postprocess`: median filter, eroded brain), then all visits segmented together
    (eq. 3.9). `transforms[k]` takes the first visit's grid points to visit k's (None for the
    first); `references` (imputed visits) join LAFM as further visits but get no outputs and
    no share in the segmentation; with one visit and no reference (or `fuse` False: the
    single-visit ablation, segmented per patient all the same) nothing is moved or fused."""
    settings = model.settings
    fuse = fuse and len(scores) + len(references) > 1

    def in_first(score: np.ndarray, frame: int) -> np.ndarray:
        return score if frame == 0 else into_first(score, grids[frame], transforms[frame])

    if fuse:
        maps = ([in_first(s, k) for k, s in enumerate(scores)]
                + [in_first(r.scores.fam, r.frame) for r in references])
        fused_first = lafm(maps, [*times, *(r.age for r in references)], brains[0],
                           settings.lafm())[:len(scores)]
        fused = [f if k == 0 else from_first(f, grids[k], transforms[k]) * (brains[k] > 0)
                 for k, f in enumerate(fused_first)]
    else:
        fused = list(scores)
    anomaly = [model.postprocess(f, b) for f, b in zip(fused, brains, strict=True)]
    pixel = [model.postprocess(p, b) for p, b in zip(pixels, brains, strict=True)]
    scored = [erode_brain_mask(np.asarray(b) > 0, settings.erosion) for b in brains]
    return FusedVisits(anomaly, pixel, yen_segmentation(anomaly, pixel, scored), fuse)


def image_scores(anomaly: np.ndarray, brain: np.ndarray) -> dict:
    """A visit's image-level scores of its map inside the brain (section 5.2.3; max was the
    report's best): max, mean, mean of the top 100 voxels, mean above the 99th percentile."""
    inside = np.asarray(brain) > 0
    return {"max": max_score(anomaly, inside), "mean": mean_score(anomaly, inside),
            "top_100_mean": top_k_mean(anomaly, inside, min(100, int(inside.sum()))),
            "quantile_99_mean": quantile_mean(anomaly, inside, 0.99)}


def imputation_plan(times: Sequence[float], every: float) -> list[tuple[float, int]]:
    """(age, index of the real visit before it) of every visit to impute: `every` years apart
    after each visit, while at least half of `every` remains before the next visit."""
    plan = []
    if every <= 0:
        return plan
    for k, (start, end) in enumerate(zip(times, times[1:], strict=False)):
        steps = 1
        while start + steps * every <= end - every / 2:
            plan.append((start + steps * every, k))
            steps += 1
    return plan


def impute_visits(loaded, scans: Sequence[PreparedScan], times: Sequence[float],
                  plan: Sequence[tuple[float, int]], progress: Progress, device: str
                  ) -> tuple[list[ImputedVisit], dict]:
    """The planned visits imputed by TDM, each from the visit before it (real or imputed,
    autoregressively, on that real visit's grid, as the report section 6.1), and scored by
    the longitudinal method's model `loaded`; with the TDM bundle's description."""
    from .imputation import load_tdm_bundle

    bundle, tdm = load_tdm_bundle()
    tdm.to(select_device(device))
    imputed, previous = [], {}  # previous: real visit index -> (age, grid image) last made
    for age, frame in plan:
        brain = scans[frame].brain
        from_age, image = previous.get(frame, (times[frame], scans[frame].grid_image))
        progress.step(f"imputing age {age:g} from age {from_age:g} (TDM)")
        image = tdm.impute(image, brain, from_age, age, progress.substep)
        previous[frame] = (age, image)
        harmonised, _, _ = loaded.harmonise(image, brain)
        scores, _ = predict_on_device(
            loaded, lambda m, x=harmonised, b=brain: m.model.scores(x, b), progress, device)
        imputed.append(ImputedVisit(age, from_age, frame, scores))
    return imputed, {"model": bundle.id, "trained_on": bundle.manifest.get(
        "training_data", {}).get("pairs", ""), "settings": asdict(tdm.settings)}


def imputation_report(every: float, imputed: Sequence[ImputedVisit], model: dict) -> dict:
    """What the report says of TDM imputation: off, nothing to impute, or which visits."""
    if every <= 0:
        return {"applied": False, "why": "off (option impute_every 0)"}
    if not imputed:
        return {"applied": False, "every_years": every,
                "why": f"no two visits are more than {every:g} years apart"}
    return {"applied": True, "every_years": every, **model,
            "visits": [{"age": v.age, "imputed_from_age": v.from_age,
                        "on_the_grid_of_visit": v.frame + 1} for v in imputed],
            "use": "LAFM references only: imputed visits have no outputs and do not enter "
                   "the Yen segmentation"}


def check_visits(sources: Sequence[str | os.PathLike], ages: Sequence[float], sex: str
                 ) -> list[Subject]:
    """One age per visit, each plausible, in scan order (not decreasing)."""
    if not sources:
        raise InputError("A longitudinal run needs at least one visit (a scan and its age).")
    if len(ages) != len(sources):
        raise InputError(f"{len(sources)} scans but {len(ages)} ages: give one age per visit, "
                         "in the order of the scans (--age 61.0 62.5 64.1).")
    subjects = [check_covariates(age, sex) for age in ages]
    if any(b.age < a.age for a, b in zip(subjects, subjects[1:], strict=False)):
        raise InputError(f"The visits' ages {list(ages)} go down: give the scans in the order "
                         "they were acquired, each with the age at that scan.")
    return subjects


def align_visits(scans: Sequence[PreparedScan], seed: int = 0) -> list[sitk.Transform | None]:
    """None for the first visit, then each follow-up's rigid transform from the first visit's
    grid (fixed) to its own (moving)."""
    first = scans[0]
    return [None] + [rigid_to_first(first.case.image, first.brain, scan.case.image, seed)
                     for scan in scans[1:]]


def run_visits(
    sources: Sequence[str | os.PathLike],
    ages: Sequence[float],
    sex: str,
    out: str | os.PathLike,
    method: str = "longitudinal",
    brain_masks: Sequence[str | os.PathLike | None] | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    device: str = "auto",
    options: dict | None = None,
    staging_dir: str | os.PathLike | None = None,
    loaded_methods: dict | None = None,
) -> list[dict]:
    """Run a longitudinal method on a patient's visits and write `out`/visitK/ for each visit
    and `out`/summary.png, whole or not at all; returns each visit's report.
    `loaded_methods` (see `pipeline.load_methods`) lets a persistent worker reuse the model."""
    if method not in LONGITUDINAL_METHODS:
        raise OptionError(f"{method} reads one scan at a time; the methods that read several "
                          f"visits are: {', '.join(LONGITUDINAL_METHODS)}.")
    subjects = check_visits(sources, ages, sex)
    brain_masks = list(brain_masks or [None] * len(sources))
    if len(brain_masks) != len(sources):
        raise InputError(f"{len(sources)} scans but {len(brain_masks)} brain masks.")
    for source, mask in zip(sources, brain_masks, strict=True):  # every guard before any work
        checked = check_run(source, [method], mask, {method: options or {}})
    check_writable(out)
    progress = progress or Progress()
    every = float(checked[method].get("impute_every", 0.0))
    plan = imputation_plan([s.age for s in subjects], every)
    # loading and aligning; per visit preprocessing, the model, back to the scan, writing;
    # per imputed visit TDM (its SDM pass is a sub-step)
    progress.total = 2 + 4 * len(sources) + len(plan)
    progress.step("load models")
    start = time.perf_counter()
    bundle, loaded = load_methods([method], checked, loaded_methods)[method]
    load_s = time.perf_counter() - start

    scans, runs = [], []  # runs: VisitRun per visit
    for number, (source, mask) in enumerate(zip(sources, brain_masks, strict=True), start=1):
        progress.step(f"visit {number}: preprocessing")
        scans.append(prepare_scan(source, mask, seed))
    progress.step("aligning the visits")
    start = time.perf_counter()
    transforms = align_visits(scans, seed)
    align_s = time.perf_counter() - start
    for number, scan in enumerate(scans, start=1):
        progress.step(f"visit {number}: {method}")
        start = time.perf_counter()
        harmonised, gain, harmonisation = loaded.harmonise(scan.grid_image, scan.brain)
        scores, used = predict_on_device(
            loaded, lambda m, image=harmonised, brain=scan.brain: m.model.scores(
                image, brain, progress.substep), progress, device)
        runs.append(VisitRun(scores, gain, harmonisation, used, time.perf_counter() - start))

    model = loaded.model
    times = [s.age for s in subjects]
    start = time.perf_counter()
    imputed, tdm_model = (impute_visits(loaded, scans, times, plan, progress, device) if plan
                          else ([], {}))
    impute_s = time.perf_counter() - start
    fused = fuse_visits([r.scores.fam for r in runs], [r.scores.pixel for r in runs],
                        [scan.brain for scan in scans], times, model,
                        [scan.case.image for scan in scans], transforms, references=imputed)
    threshold = loaded.calibration.output_threshold
    reports, maps = [], []
    with atomic_output_folder(out, staging_dir) as staging:
        for k, (scan, run) in enumerate(zip(scans, runs, strict=True)):
            folder = staging / f"visit{k + 1}"
            folder.mkdir()
            output = MethodOutput(
                fused.anomaly[k], loaded.unharmonised(run.scores.healthy, scan.brain, run.gain),
                fused.segmentation.masks[k],
                {"value": fused.segmentation.raw_score_threshold, "map": "raw",
                 "rule": YEN_RULE, "score_threshold": fused.segmentation.score_threshold,
                 "pixel_threshold": fused.segmentation.pixel_threshold,
                 "calibrated": threshold_report(loaded, threshold, checked[method])},
                run.harmonisation, run.device,
                {"longitudinal": {
                    "visit": k + 1, "visits": len(scans), "ages": times,
                    "lafm": ({"applied": True, **asdict(model.settings.lafm())}
                             if fused.lafm_applied else
                             {"applied": False, "why": "one visit: nothing to fuse with"}),
                    "imputation": imputation_report(every, imputed, tdm_model),
                    "aligned_to_visit1": (None if transforms[k] is None
                                          else list(transforms[k].GetParameters())),
                    "calibrated_mask_voxels": int(
                        (fused.anomaly[k] > threshold).sum()),
                    "image_scores": image_scores(fused.anomaly[k], scan.brain),
                    "abnormality_index_over": INDEX_OVER}},
                index_map=model.postprocess(run.scores.fam, scan.brain))
            timings = {"load_models": load_s, "preprocess": scan.preprocess_s,
                       "align_visits": align_s, "method": run.seconds,
                       **({"impute_visits": impute_s} if imputed else {})}
            report, _ = write_method_outputs(
                loaded, bundle, scan.case, scan.native, scan.brain, subjects[k], folder,
                timings, scan.input_info, progress, device, checked[method], output)
            reports.append(report)
            maps.append(folder / "summary.png")
        _side_by_side(maps, staging / "summary.png")
        (staging / "visits.json").write_text(json.dumps(
            {"method": method, "visits": [str(s) for s in sources], "ages": times,
             "imputed_ages": [v.age for v in imputed],
             "flagged_ml": [r["lesions"]["volume_ml"] for r in reports]}, indent=2))
    return reports


def _side_by_side(pictures: Sequence[Path], path: Path) -> None:
    """The visits' summary pictures in one row, in visit order."""
    from PIL import Image

    images = [Image.open(p).convert("RGB") for p in pictures]
    row = Image.new("RGB", (sum(i.width for i in images), max(i.height for i in images)))
    x = 0
    for image in images:
        row.paste(image, (x, 0))
        x += image.width
    row.save(path)

"""A longitudinal benchmark built from the cohort's healthy validation subjects (no real
longitudinal scans are available here), and its evaluation per visit.

Each validation subject gives two sequences of K visits, one year apart:
- `healthy`: K re-acquisitions of the same healthy scan;
- `lesioned`: the same re-acquisitions with lesions that grow over the visits: NeuroAD's fluid
  synthesis (eq. 3-6) gives each lesion's final extent, and earlier visits hold its core,
  growing outwards (the first visit's lesion is the part deeper than 60% of its depth).
A re-acquisition is a small rigid motion (up to 2 degrees, 2 mm), a mild bias field and noise,
so that the method has to align the visits before fusing them. Where the cohort's raw scans
are at hand, it is applied in native space: the lesions, drawn on the grid, are moved onto the
raw scan, the head is moved and re-scanned there, and each visit goes through NeuroAD's whole
preprocessing (skull stripping, registration, normalisation) on its own; otherwise (a cohort of
grid scans only) it is applied on the grid.

`evaluate_visits` scores, per visit: SDM alone (its pixel distance), SDM + FAM, SDM + FAM +
LAFM (the longitudinal method) and zscore; each at its healthy-calibrated threshold and at
the per-patient Yen threshold.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..cohort import read_manifest
from ..postprocessing import binarize, erode_brain_mask, yen_threshold
from ..synthesis import SynthesisConfig, load_library
from ..synthesis.acquisition import AcquisitionConfig, augment_acquisition, bias_field
from ..synthesis.fluid import advect_diffuse, random_velocity
from ..synthesis.lesions import (
    SIGN_BY_CONTRAST,
    draw_shape,
    place_shape,
    white_matter_mean,
)
from ..volumes import read_volume, write_volume
from . import metrics

MANIFEST = "visits.csv"
FIELDS = ["sequence", "visit", "kind", "image", "brain_mask", "lesion_mask", "subject", "age",
          "sex", "native", "native_lesion_mask"]
SEED = 2_000_003  # far from the trainers' and the other benchmarks' seeds
# A re-acquisition on the same scanner: mild bias and noise, no contrast or thickness change.
REVISIT = AcquisitionConfig(probability=1.0, contrast_gamma=(1.0, 1.0),
                            bias_amplitude=(0.0, 0.1), slice_thickness_mm=(2.0, 2.0),
                            blur_sigma_mm=(0.0, 0.0), noise_std=(0.003, 0.01),
                            bright_rim_fraction=(0.0, 0.0))
MOTION_DEGREES, MOTION_MM = 2.0, 2.0


@dataclass(frozen=True)
class ProgressionConfig:
    """How lesions grow: at visit k a lesion is the part of the synthesised lesion deeper
    than (1 - growth[k]) of its largest depth (the last visit's lesion is the usual
    synthesis, whole)."""

    growth: tuple[float, ...] = (0.4, 0.7, 1.0)
    lesions: tuple[int, int] = (1, 3)
    synthesis: SynthesisConfig = SynthesisConfig(perlin_radius_voxels=(4.0, 9.0))


def _lesion_over_visits(p0: np.ndarray, inside: np.ndarray, velocity: np.ndarray,
                        duration: float, level: float, growth: tuple[float, ...]
                        ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(probability, mask) of one lesion at every visit: the synthesis's lesion (P0 flowed
    for `duration`, binarised at `level`) cut to its core deeper than (1 - growth[k]) of its
    largest depth, so that each visit's lesion holds the earlier ones'."""
    p = advect_diffuse(p0 * inside, velocity, inside, duration)
    whole = p > level
    depth = ndimage.distance_transform_edt(whole)
    return [(p, whole & (depth > (1.0 - share) * depth.max())) for share in growth]


def growing_lesions(image: np.ndarray, brain: np.ndarray, seed: int,
                    config: ProgressionConfig = ProgressionConfig(),
                    library: list[np.ndarray] | None = None
                    ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(lesioned image, lesion mask) per visit: each lesion is drawn once (shape, place, flow,
    contrast dx, binarisation level) and grows over the visits (`_lesion_over_visits`); one
    whose first-visit core is under the synthesis's minimum size is drawn again. Intensities
    follow eq. 5: x + dx P on the lesion."""
    rng = np.random.default_rng(seed)
    brain = np.asarray(brain, bool)
    synthesis = config.synthesis
    mu_w = white_matter_mean(image, brain)
    lesions = []
    for _ in range(rng.integers(config.lesions[0], config.lesions[1] + 1)):
        for _ in range(synthesis.max_draws):
            placed = place_shape(draw_shape(rng, library, synthesis), brain, rng,
                                 synthesis.margin_voxels)
            if placed is None:
                continue
            box, p0 = placed
            over_visits = _lesion_over_visits(p0, brain[box], random_velocity(p0.shape, rng),
                                              rng.uniform(*synthesis.displacement_voxels),
                                              rng.uniform(*synthesis.binarise_at),
                                              config.growth)
            delta = rng.normal(SIGN_BY_CONTRAST[synthesis.contrast] * mu_w / 2.0, mu_w / 4.0)
            if over_visits[0][1].sum() >= synthesis.min_lesion_voxels:
                lesions.append((box, over_visits, delta))
                break
    visits = []
    for k in range(len(config.growth)):
        lesioned = np.asarray(image, np.float32).copy()
        mask = np.zeros(brain.shape, bool)
        for box, over_visits, delta in lesions:
            p, lesion = over_visits[k]
            region = lesioned[box]
            region[lesion] = np.clip(region[lesion] + delta * p[lesion], 0.0, 1.0)
            mask[box] |= lesion
        visits.append((lesioned, mask))
    return visits


def rigid_motion(like: sitk.Image, rng: np.random.Generator) -> sitk.Euler3DTransform:
    """A small random head motion about the grid's centre."""
    motion = sitk.Euler3DTransform()
    motion.SetCenter(like.TransformContinuousIndexToPhysicalPoint(
        [(n - 1) / 2.0 for n in like.GetSize()]))
    angles = np.deg2rad(rng.uniform(-MOTION_DEGREES, MOTION_DEGREES, 3))
    motion.SetRotation(*angles)
    motion.SetTranslation(tuple(rng.uniform(-MOTION_MM, MOTION_MM, 3)))
    return motion


def _moved(array: np.ndarray, like: sitk.Image, motion: sitk.Transform, nearest: bool
           ) -> np.ndarray:
    image = sitk.GetImageFromArray(np.asarray(array, np.float32))
    image.CopyInformation(like)
    kind = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    return sitk.GetArrayFromImage(sitk.Resample(image, like, motion, kind, 0.0))


def reacquired(image: np.ndarray, brain: np.ndarray, lesion: np.ndarray, like: sitk.Image,
               seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, brain, lesion) of one visit: moved rigidly, then scanned with a mild bias field
    and noise."""
    rng = np.random.default_rng(seed)
    motion = rigid_motion(like, rng)
    brain = _moved(brain, like, motion, nearest=True) > 0
    moved = _moved(image, like, motion, nearest=False)
    scanned, _ = augment_acquisition(moved, brain, seed, REVISIT)
    return scanned.astype(np.float32), brain, _moved(lesion, like, motion, nearest=True) > 0


@dataclass
class NativeSubject:
    """A cohort subject's raw scan and what its preprocessing found: the native brain mask,
    the grid-to-native transform and the intensity scale of the grid image."""

    scan: sitk.Image
    brain: sitk.Image
    template_to_native: sitk.Transform
    scale: float

    @classmethod
    def of(cls, cohort_dir: Path, source: Path, row: dict) -> NativeSubject:
        folder = (cohort_dir / row["image"]).parent
        report = json.loads((folder / "preprocess.json").read_text())
        return cls(read_volume(source / row["file"]),
                   sitk.ReadImage(str(folder / "native_brain_mask.nii.gz")),
                   sitk.ReadTransform(str(folder / "template_to_native.tfm")),
                   float(report["normalisation"]["scale"]))


def rescanned(scan: sitk.Image, brain: sitk.Image, lesion: sitk.Image, seed: int
              ) -> tuple[sitk.Image, sitk.Image]:
    """(scan, lesion mask) of one native re-acquisition: the head moved rigidly, then a mild
    bias field over the whole field of view and noise relative to the brain's 99.5th
    percentile (the pipeline's intensity scale)."""
    rng = np.random.default_rng(seed)
    motion = rigid_motion(scan, rng)
    moved = sitk.GetArrayFromImage(sitk.Resample(scan, scan, motion, sitk.sitkLinear, 0.0))
    inside = sitk.GetArrayFromImage(sitk.Resample(brain, scan, motion,
                                                  sitk.sitkNearestNeighbor, 0)) > 0
    amplitude, noise = rng.uniform(*REVISIT.bias_amplitude), rng.uniform(*REVISIT.noise_std)
    field = bias_field(moved.shape, amplitude,
                       REVISIT.bias_wavelength_mm / min(scan.GetSpacing()), rng)
    level = float(np.percentile(moved[inside], 99.5)) if inside.any() else 1.0
    noisy = np.clip(moved * field + rng.normal(0.0, noise * level, moved.shape), 0.0, None)
    image = sitk.GetImageFromArray(noisy.astype(np.float32))
    image.CopyInformation(scan)
    return image, sitk.Resample(lesion, scan, motion, sitk.sitkNearestNeighbor, 0)


def native_visit(subject: NativeSubject, like: sitk.Image, change: np.ndarray,
                 lesion: np.ndarray, seed: int) -> tuple[sitk.Image, sitk.Image, Any]:
    """One visit re-acquired in native space: the grid's lesion change (normalised
    intensities) and mask moved onto the raw scan, the scan re-acquired (`rescanned`), then
    preprocessed by NeuroAD's own pipeline. Returns (native scan, native lesion mask, the
    visit's PreprocessResult)."""
    from ..preprocessing import grid_to_native, preprocess

    def on_grid(array: np.ndarray) -> sitk.Image:
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(like)
        return image

    native_change = grid_to_native(on_grid((change * subject.scale).astype(np.float32)),
                                   subject.template_to_native, subject.scan)
    native_lesion = grid_to_native(on_grid(lesion.astype(np.uint8)),
                                   subject.template_to_native, subject.scan, kind="mask")
    lesioned = sitk.Add(sitk.Cast(subject.scan, sitk.sitkFloat32), native_change)
    scan, scan_lesion = rescanned(lesioned, subject.brain, native_lesion, seed)
    return scan, scan_lesion, preprocess(scan, seed=0)


def lesion_on_grid(lesion: sitk.Image, prepared) -> np.ndarray:
    """A native lesion mask on a preprocessed visit's grid (nearest neighbour)."""
    moved = sitk.Resample(lesion, prepared.image, prepared.template_to_native,
                          sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(moved) > 0


def native_source(cohort_dir: Path) -> Path | None:
    """The folder of the cohort's raw scans, when the cohort records one that exists."""
    record = cohort_dir / "cohort.json"
    if not record.is_file():
        return None
    source = json.loads(record.read_text()).get("source")
    return Path(source) if source and Path(source).is_dir() else None


def build_longitudinal_set(cohort_dir: str | os.PathLike, out: str | os.PathLike,
                           progression: ProgressionConfig = ProgressionConfig(),
                           library_folder: str | os.PathLike | None = None,
                           subjects: int | None = None, native: bool | None = None) -> Path:
    """For every validation subject (the first `subjects` of them): a healthy and a lesioned
    sequence of len(progression.growth) visits a year apart; writes visits.csv. `native`
    (default: when the cohort's raw scans are at hand): each visit is re-acquired from the
    raw scan and preprocessed by the pipeline (`native_visit`), and its native scan and
    lesion mask are written too (columns `native`, `native_lesion_mask`); otherwise visits are
    re-acquired on the grid (`reacquired`)."""
    cohort_dir, out = Path(cohort_dir), Path(out)
    source = native_source(cohort_dir)
    native = source is not None if native is None else native
    if native and source is None:
        raise ValueError(f"{cohort_dir} records no folder of raw scans (cohort.json source): "
                         "re-acquisition in native space needs them.")
    library = load_library(library_folder) if library_folder else None
    rows = []
    chosen = [r for r in read_manifest(cohort_dir) if r["split"] == "validation"][:subjects]
    for number, subject in enumerate(chosen):
        like = sitk.ReadImage(str(cohort_dir / subject["image"]), sitk.sitkFloat32)
        image = sitk.GetArrayFromImage(like)
        brain = sitk.GetArrayFromImage(sitk.ReadImage(str(cohort_dir / subject["brain_mask"])))
        brain = brain > 0
        raw = NativeSubject.of(cohort_dir, source, subject) if native else None
        healthy = [(image, np.zeros(brain.shape, bool))] * len(progression.growth)
        lesioned = growing_lesions(image, brain, SEED + number, progression, library)
        for kind, visits in (("healthy", healthy), ("lesioned", lesioned)):
            sequence = f"{subject['subject']}_{kind}"
            folder = out / sequence
            folder.mkdir(parents=True, exist_ok=True)
            for k, (visit_image, lesion) in enumerate(visits):
                seed = SEED + 1000 * number + k
                names = {key: f"{sequence}/visit{k + 1}_{key}.nii.gz"
                         for key in ("image", "brain_mask", "lesion_mask")}
                if raw is None:
                    arrays = reacquired(visit_image, brain, lesion, like, seed)
                    grid = like
                else:
                    scan, scan_lesion, prepared = native_visit(raw, like, visit_image - image,
                                                               lesion, seed)
                    arrays = (sitk.GetArrayFromImage(prepared.image),
                              sitk.GetArrayFromImage(prepared.brain_mask) > 0,
                              lesion_on_grid(scan_lesion, prepared))
                    grid = prepared.image
                    names["native"] = f"{sequence}/visit{k + 1}_native.nii.gz"
                    names["native_lesion_mask"] = f"{sequence}/visit{k + 1}_native_lesion.nii.gz"
                    write_volume(scan, out / names["native"])
                    write_volume(scan_lesion, out / names["native_lesion_mask"])
                for key, array in zip(("image", "brain_mask", "lesion_mask"), arrays,
                                      strict=True):
                    written = sitk.GetImageFromArray(
                        array if key == "image" else array.astype(np.uint8))
                    written.CopyInformation(grid)
                    write_volume(written, out / names[key])
                rows.append({"sequence": sequence, "visit": k + 1, "kind": kind, **names,
                             "subject": subject["subject"],
                             "age": round(float(subject["age"]) + k, 2),
                             "sex": subject["sex"]})
    with (out / MANIFEST).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return out / MANIFEST


def read_sequences(manifest: str | os.PathLike) -> dict[str, list[dict]]:
    """sequence -> its visits in order, with absolute paths."""
    manifest = Path(manifest)
    sequences: dict[str, list[dict]] = {}
    for row in csv.DictReader(manifest.open(newline="")):
        for key in ("image", "brain_mask", "lesion_mask", "native", "native_lesion_mask"):
            if row.get(key):
                row[key] = str(manifest.parent / row[key])
        sequences.setdefault(row["sequence"], []).append(row)
    return {name: sorted(rows, key=lambda r: int(r["visit"])) for name, rows in sequences.items()}


VARIANTS = ("sdm", "sdm_fam", "longitudinal", "zscore")


@dataclass
class ScoredSequence:
    """One benchmark sequence read from its files and through SDM once per visit: each visit's
    grid image, brain and lesion, its age, the rigid transform from visit 1's grid to its own
    (None for visit 1), and SDM's unfiltered maps of it."""

    grids: list[sitk.Image]
    images: list[np.ndarray]
    brains: list[np.ndarray]
    lesions: list[np.ndarray]
    times: list[float]
    transforms: list
    scores: list

    @classmethod
    def of(cls, visits: list[dict], sdm) -> ScoredSequence:
        """`sdm`: the loaded longitudinal method (harmonisation and model)."""
        from ..preprocessing.visits import rigid_to_first

        grids = [sitk.ReadImage(v["image"], sitk.sitkFloat32) for v in visits]
        images = [sitk.GetArrayFromImage(g) for g in grids]
        brains = [sitk.GetArrayFromImage(sitk.ReadImage(v["brain_mask"])) > 0 for v in visits]
        lesions = [sitk.GetArrayFromImage(sitk.ReadImage(v["lesion_mask"])) > 0 for v in visits]
        scores = [sdm.model.scores(sdm.harmonise(i, b)[0], b)
                  for i, b in zip(images, brains, strict=True)]
        transforms = [None] + [rigid_to_first(grids[0], brains[0], g) for g in grids[1:]]
        return cls(grids, images, brains, lesions, [float(v["age"]) for v in visits],
                   transforms, scores)

    def fused(self, model, chosen: tuple[int, ...], references: tuple = (),
              fuse: bool = True):
        """`longitudinal.fuse_visits` over the visits `chosen` (0-based, in order) with the
        imputed `references`; `fuse` False: the single-visit maps, segmented per patient."""
        from ..longitudinal import fuse_visits

        def pick(items: list) -> list:
            return [items[k] for k in chosen]

        return fuse_visits(pick([s.fam for s in self.scores]),
                           pick([s.pixel for s in self.scores]), pick(self.brains),
                           pick(self.times), model, pick(self.grids), pick(self.transforms),
                           fuse, references)


def evaluate_visits(sdm_folder: str | os.PathLike, zscore_folder: str | os.PathLike,
                    manifest: str | os.PathLike, out: str | os.PathLike, log=print) -> dict:
    """Every visit of every sequence through the four variants (SDM's reconstructions are
    computed once per visit and serve the three SDM variants); writes visits_metrics.csv and
    summary.json into `out` and returns the summary."""
    from ..methods import Calibration, load_method

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sdm = load_method("longitudinal", sdm_folder)
    zscore = load_method("zscore", zscore_folder)
    model = sdm.model
    thresholds = {"sdm": Calibration.load(Path(sdm_folder), "calibration_sdm").threshold,
                  "sdm_fam": sdm.calibration.output_threshold,
                  "longitudinal": sdm.calibration.output_threshold,
                  "zscore": zscore.calibration.output_threshold}
    rows = []
    for name, visits in read_sequences(manifest).items():
        sequence = ScoredSequence.of(visits, sdm)
        images, brains, lesions = sequence.images, sequence.brains, sequence.lesions
        every = tuple(range(len(visits)))
        single = sequence.fused(model, every, fuse=False)
        fused = sequence.fused(model, every)
        zscore_maps = [zscore.anomaly_map(i, b) for i, b in zip(images, brains, strict=True)]
        scored = [erode_brain_mask(b, model.settings.erosion) for b in brains]
        maps = {"sdm": single.pixel, "sdm_fam": single.anomaly, "longitudinal": fused.anomaly,
                "zscore": zscore_maps}
        yen = {"sdm": _pooled_yen(single.pixel, scored),
               "sdm_fam": single.segmentation.masks, "longitudinal": fused.segmentation.masks,
               "zscore": _pooled_yen(zscore_maps, brains)}
        for variant in VARIANTS:
            for k, visit in enumerate(visits):
                brain, lesion, anomaly = brains[k], lesions[k] & brains[k], maps[variant][k]
                calibrated = binarize(anomaly, thresholds[variant], brain)
                row = {"variant": variant, "sequence": name, "visit": k + 1,
                       "kind": visit["kind"], "lesion_voxels": int(lesion.sum()),
                       "yen_flagged_fraction": float(yen[variant][k][brain].mean()),
                       "calibrated_flagged_fraction": float(calibrated[brain].mean())}
                if lesion.any():
                    row.update({"ap": metrics.average_precision(anomaly, lesion, brain),
                                "dice_yen": metrics.dice(yen[variant][k] & brain, lesion),
                                "dice_calibrated": metrics.dice(calibrated, lesion)})
                rows.append(row)
        log(f"{name}: " + ", ".join(f"{r['variant']} v{r['visit']} AP {r['ap']:.3f}"
                                    for r in rows[-len(VARIANTS) * len(visits):] if "ap" in r))
    with (out / "visits_metrics.csv").open("w", newline="") as handle:
        fields = sorted({key for row in rows for key in row}, key=_field_order)
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    summary = summarise_visits(rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


# The visits (0-based) each missing-visit scenario fuses; "imputed" ones add TDM's visit 2.
MISSING_SCENARIOS = {"visits_1_3": (0, 2), "visits_1_3_imputed_2": (0, 2),
                     "visits_1_2_3": (0, 1, 2)}


def evaluate_missing_visit(sdm_folder: str | os.PathLike, tdm_folder: str | os.PathLike,
                           manifest: str | os.PathLike, out: str | os.PathLike, log=print
                           ) -> dict:
    """Three-visit sequences with the middle visit missing: the longitudinal method on visits
    1 and 3 alone, with a visit imputed by TDM at visit 2's age from visit 1 (on visit 1's
    grid, as `neuroad run --option longitudinal.impute_every=1` does), and with all three
    real visits (the reference). Scored on visits 1 and 3; writes missing_visit_metrics.csv
    and missing_visit_summary.json into `out` and returns the summary."""
    from ..longitudinal import ImputedVisit
    from ..methods import load_method
    from ..methods.tdm import load_tdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sdm, tdm = load_method("longitudinal", sdm_folder), load_tdm(tdm_folder)
    model = sdm.model
    rows = []
    for name, visits in read_sequences(manifest).items():
        if len(visits) != 3:
            raise ValueError(f"{name}: the missing-visit scenario needs 3 visits, not "
                             f"{len(visits)}.")
        sequence = ScoredSequence.of(visits, sdm)
        brains, times = sequence.brains, sequence.times
        imputed_image = tdm.impute(sequence.images[0], brains[0], times[0], times[1])
        imputed = ImputedVisit(times[1], times[0], 0, model.scores(
            sdm.harmonise(imputed_image, brains[0])[0], brains[0]))
        for scenario, chosen in MISSING_SCENARIOS.items():
            result = sequence.fused(model, chosen, (imputed,) if "imputed" in scenario else ())
            for visit in (1, 3):
                k = chosen.index(visit - 1)
                brain, lesion = brains[visit - 1], sequence.lesions[visit - 1] & brains[visit - 1]
                mask = result.segmentation.masks[k]
                row = {"scenario": scenario, "sequence": name, "visit": visit,
                       "kind": visits[visit - 1]["kind"],
                       "yen_flagged_fraction": float(mask[brain].mean())}
                if lesion.any():
                    row.update({"ap": metrics.average_precision(result.anomaly[k], lesion,
                                                                brain),
                                "dice_yen": metrics.dice(mask & brain, lesion)})
                rows.append(row)
        log(f"{name}: " + ", ".join(f"{r['scenario']} v{r['visit']} AP {r['ap']:.3f}"
                                    for r in rows[-6:] if "ap" in r))
    with (out / "missing_visit_metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=sorted({k for row in rows for k in row}))
        writer.writeheader()
        writer.writerows(rows)
    summary = {scenario: {str(visit): _visit_figures(
        [r for r in rows if r["scenario"] == scenario and r["visit"] == visit])
        for visit in (1, 3)} for scenario in MISSING_SCENARIOS}
    (out / "missing_visit_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _visit_figures(rows: list[dict]) -> dict:
    """Mean AP and Yen Dice over a visit's lesioned rows, mean Yen-flagged share of its
    healthy ones."""
    lesioned = [r for r in rows if "ap" in r]
    return {"ap": _mean(lesioned, "ap"), "dice_yen": _mean(lesioned, "dice_yen"),
            "healthy_yen_fpr": _mean([r for r in rows if r["kind"] == "healthy"],
                                     "yen_flagged_fraction")}


def _pooled_yen(maps: list[np.ndarray], brains: list[np.ndarray]) -> list[np.ndarray]:
    """Yen's threshold of one patient's maps over all visits' brains (patient-wise)."""
    threshold = yen_threshold(np.concatenate([m[b] for m, b in zip(maps, brains, strict=True)]))
    return [(m >= threshold) & b for m, b in zip(maps, brains, strict=True)]


def _field_order(key: str) -> tuple[int, str]:
    first = ["variant", "sequence", "visit", "kind", "lesion_voxels"]
    return (first.index(key), key) if key in first else (len(first), key)


def _mean(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if key in r]
    return float(np.mean(values)) if values else None


def summarise_visits(rows: list[dict]) -> dict:
    """Per variant and visit: mean AP, Dice at Yen and at the calibrated threshold over the
    lesioned sequences, and the mean flagged share of healthy brains at both thresholds."""
    summary: dict = {}
    for variant in VARIANTS:
        mine = [r for r in rows if r["variant"] == variant]
        summary[variant] = {}
        for visit in sorted({r["visit"] for r in mine}):
            lesioned = [r for r in mine if r["visit"] == visit and "ap" in r]
            healthy = [r for r in mine if r["visit"] == visit and r["kind"] == "healthy"]
            summary[variant][str(visit)] = {
                "ap": _mean(lesioned, "ap"), "dice_yen": _mean(lesioned, "dice_yen"),
                "dice_calibrated": _mean(lesioned, "dice_calibrated"),
                "healthy_yen_fpr": _mean(healthy, "yen_flagged_fraction"),
                "healthy_calibrated_fpr": _mean(healthy, "calibrated_flagged_fraction")}
    return summary

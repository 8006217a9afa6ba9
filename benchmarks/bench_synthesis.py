"""Synthesis speed, lesion-volume distribution and a contact sheet of examples.

    python benchmarks/bench_synthesis.py COHORT_CACHE --library LIBRARY --out DIR [--n 40]

Lesions `--n` grid volumes (the cohort's validation subjects, cycling, seed = index), timing
each call of `synthesize` on the calling process, and prints JSON with the time per volume
(median, max) and the lesion volumes in mL (quartiles); writes DIR/synthesis_examples.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image
from skimage.segmentation import find_boundaries

from NeuroADLib.cohort import read_manifest
from NeuroADLib.grid import GridSpec
from NeuroADLib.qc import contact_sheet
from NeuroADLib.synthesis import load_library, synthesize


def example_strip(image: np.ndarray, lesion: np.ndarray) -> np.ndarray:
    z = int(np.argmax(lesion.sum(axis=(1, 2))))  # the slice with most lesion
    grey = np.repeat((np.clip(image[z], 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)
    outlined = grey.copy()
    outlined[find_boundaries(lesion[z], mode="inner")] = (255, 40, 40)
    strip = np.flipud(np.concatenate([grey, outlined], axis=1))
    return np.asarray(Image.fromarray(strip).resize((strip.shape[1] * 2, strip.shape[0] * 2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cohort", type=Path)
    parser.add_argument("--library", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=40)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    subjects = [r for r in read_manifest(args.cohort) if r["split"] == "validation"]
    library = load_library(args.library) if args.library else None
    seconds, volumes, strips = [], [], []
    voxel_ml = GridSpec().voxel_volume_ml
    for index in range(args.n):
        row = subjects[index % len(subjects)]
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(args.cohort / row["image"])))
        brain = sitk.GetArrayFromImage(sitk.ReadImage(str(args.cohort / row["brain_mask"]))) > 0
        start = time.perf_counter()
        result = synthesize(image, brain, seed=index, library=library)
        seconds.append(time.perf_counter() - start)
        volumes.append(float(result.mask.sum() * voxel_ml))
        if index < 24 and result.mask.any():
            strips.append((f"seed {index}  {volumes[-1]:.1f} mL", example_strip(result.image,
                                                                                 result.mask)))
    contact_sheet(strips, args.out / "synthesis_examples.png", columns=4)
    print(json.dumps({
        "volumes": args.n, "library_shapes": len(library) if library else 0,
        "seconds_per_volume": {"median": float(np.median(seconds)), "max": float(max(seconds))},
        "lesion_volume_ml": dict(zip(["min", "q25", "median", "q75", "max"],
                                     np.percentile(volumes, [0, 25, 50, 75, 100]).round(2).tolist(),
                                     strict=True)),
    }, indent=2))


if __name__ == "__main__":
    main()

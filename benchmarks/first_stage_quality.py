"""How faithful a first-stage autoencoder is, on healthy validation scans, next to references.

For each `--autoencoder LABEL=FOLDER` (coded window by window as at inference), on the first N
validation scans of a cohort:

    brain   MAE / PSNR / SSIM inside the brain (the figure NeuroAD's issues and README quote)
    offset  mean signed error inside the brain (reconstruction minus scan): a brightness bias
    volume  MAE / PSNR over the whole grid, background included (the papers' usual figure: the
            CADD paper's 0.0103 is of this kind, so a brain-only MAE reads about 1 / (brain
            share of the grid) times higher for the same reconstruction)
    seconds encode + decode of one volume

and two references that need no training: each scan average-pooled by f (one value for every
f^3 voxels, as a 1-channel latent of downsampling f) and brought back by trilinear
interpolation, for f = 2 and 4; and the noise of the scans (sigma from the differences of
neighbouring voxels in deep white matter, over sqrt 2, and its mean absolute value
sigma sqrt(2 / pi): the error of a perfect reconstruction of the anatomy without its noise).

    python benchmarks/first_stage_quality.py --cohort ~/neuroad-cache/ixi_2mm --subjects 8 \
        --autoencoder bundled=NeuroADLib/models/bundled/cadd-ixi-2mm/autoencoder \
        [--harmonise NeuroADLib/models/bundled/cadd-ixi-2mm] [--json quality.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from scipy import ndimage

from NeuroADLib.evaluation.metrics import mae_psnr_ssim
from NeuroADLib.networks.autoencoder import decode_image, encode_image, load_autoencoder
from NeuroADLib.preprocessing.harmonisation import IntensityStandard
from NeuroADLib.training.data import load_split

POOLING_FACTORS = (2, 4)
WHITE_MATTER_PERCENTILE = 70  # brain voxels above it, eroded once, count as deep white matter


def quality(reconstruction: np.ndarray, image: np.ndarray, brain: np.ndarray) -> dict:
    """Brain and whole-volume figures of one reconstruction (zero outside the brain)."""
    reconstruction = np.clip(reconstruction, 0, 1) * brain
    inside = mae_psnr_ssim(reconstruction, image, brain)
    # over the whole grid: no second SSIM (the same map), only the errors' means
    difference = (reconstruction - image * brain).astype(np.float64)
    return {"brain_mae": inside["mae"], "brain_psnr": inside["psnr"],
            "brain_ssim": inside["ssim"],
            "brain_offset": float(difference[brain].mean()),
            "volume_mae": float(np.abs(difference).mean()),
            "volume_psnr": float(-10 * np.log10(np.mean(difference**2)))}


def pooled(image: np.ndarray, factor: int) -> np.ndarray:
    """The scan average-pooled by `factor` and interpolated back (trilinear) to its grid."""
    import torch
    import torch.nn.functional as functional

    x = torch.from_numpy(image[None, None].astype(np.float32))
    small = functional.avg_pool3d(x, factor)
    return functional.interpolate(small, size=x.shape[2:], mode="trilinear",
                                  align_corners=False)[0, 0].numpy()


def noise_sigma(image: np.ndarray, brain: np.ndarray) -> float:
    """Noise sigma from neighbouring voxels' differences in deep white matter (over sqrt 2)."""
    white = brain & (image > np.percentile(image[brain], WHITE_MATTER_PERCENTILE))
    white = ndimage.binary_erosion(white)
    pairs = white[..., 1:] & white[..., :-1]
    return float((image[..., 1:] - image[..., :-1])[pairs].std() / np.sqrt(2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", required=True, help="a prepared cohort folder or its pack")
    parser.add_argument("--autoencoder", action="append", default=[], metavar="LABEL=FOLDER")
    parser.add_argument("--subjects", type=int, default=8, help="first N validation scans")
    parser.add_argument("--harmonise", metavar="BUNDLE",
                        help="harmonise the scans to this bundle's intensity standard first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the per-scan figures and means here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    validation = load_split(args.cohort, "validation")
    scans = list(zip(validation.images, validation.masks, strict=True))[:args.subjects]
    standard = IntensityStandard.load(args.harmonise) if args.harmonise else None
    if args.harmonise and standard is None:
        parser.error(f"{args.harmonise} holds no intensity standard")
    if standard is not None:
        scans = [(standard.harmonise(image, brain)[0], brain) for image, brain in scans]
    scans = [(np.asarray(image, np.float32), np.asarray(brain, bool)) for image, brain in scans]

    figures: dict[str, list[dict]] = {}
    for factor in POOLING_FACTORS:
        figures[f"pooling {factor}x"] = [quality(pooled(image, factor), image, brain)
                                         for image, brain in scans]
    for spec in args.autoencoder:
        label, _, folder = spec.partition("=")
        autoencoder, _ = load_autoencoder(folder)
        rows = []
        for image, brain in scans:
            began = time.perf_counter()
            reconstruction = decode_image(autoencoder, encode_image(autoencoder, image))
            row = quality(reconstruction, image, brain)
            row["seconds"] = time.perf_counter() - began
            rows.append(row)
        figures[label] = rows
    sigmas = [noise_sigma(image, brain) for image, brain in scans]

    means = {label: {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}
             for label, rows in figures.items()}
    sigma = float(np.mean(sigmas))
    print(f"{len(scans)} validation scans; brain share of the grid "
          f"{np.mean([brain.mean() for _, brain in scans]):.3f}; white-matter noise sigma "
          f"{sigma:.4f}, its mean absolute value {sigma * np.sqrt(2 / np.pi):.4f}")
    print("| first stage | brain MAE | brain PSNR | brain SSIM | brain offset | volume MAE | "
          "volume PSNR | s |")
    print("|---|---|---|---|---|---|---|---|")
    for label, row in means.items():
        seconds = f"{row['seconds']:.1f}" if "seconds" in row else ""
        print(f"| {label} | {row['brain_mae']:.4f} | {row['brain_psnr']:.2f} | "
              f"{row['brain_ssim']:.3f} | {row['brain_offset']:+.4f} | "
              f"{row['volume_mae']:.4f} | {row['volume_psnr']:.2f} | "
              f"{seconds} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"means": means, "per_scan": figures, "noise_sigma": sigmas,
                       "harmonised_with": args.harmonise, "subjects": args.subjects},
                      handle, indent=1)


if __name__ == "__main__":
    main()

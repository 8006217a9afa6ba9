"""Where CADD loses its lesions (issue 14): three maps of one CADD run per case.

CADD's network ranks a lesion's latent positions high (their KL, Algorithm 1's inpainting
criterion), yet its pseudo-healthy image undoes only a sixth of a lesion. This script keeps,
for each case of a grid case table, the unfiltered maps that tell the steps apart, in
`neuroad evaluate`'s layout (OUT/maps/NAME/CASE.npy), for `normative_maps.py
--post-filter NAME=sigma=2` and `postprocessing_sweep.py` to score:

- `cadd`: the bundle's own map, |D(E(x)) - D(z^)| with z^ Algorithm 1's blend, the mean over
  the levels U of m_U * z_0^U + (1 - m_U) * z_0 (it reproduces `neuroad evaluate --methods
  cadd --map raw --option cadd.gaussian_sigma=0`);
- `cadd_masked_mean`: the same chains and masks, but each latent position the mean of the
  chains that inpainted it (z_0 where none did), so that a position masked at one level of
  ten is replaced, not moved a tenth of the way;
- `kl_max_LO_HI`: no chain at all: KL_U over the cohort's P95 at U (the ratio Algorithm 1
  thresholds), the maximum over levels LO..HI, upsampled trilinearly to the grid;
- `kl_acqQ_LO_HI` (with `--acquisition-cohort`): the same ratio over an acquisition-aware
  percentile, the larger of the cohort's P95 and the Q-th percentile of KL_U over N training
  scans each under one random acquisition (`augment_acquisition`, seeds 900000 + k, which no
  trainer and no benchmark uses), so that what a scanner does to the KL is in the denominator.
  The table is written to `--acquisition-table` and read from there on later calls.

    python benchmarks/cadd_inpainting_maps.py --bundle NeuroADLib/models/bundled/cadd-ixi-2mm \
        --cases BENCH/synthetic/cases.csv --out results/cadd_inpainting/synthetic \
        [--kl-levels 50:500 --kl-levels 250:750] [--kl-only] [--threads 2] \
        [--acquisition-cohort COHORT --acquisition-scans 50 --acquisition-quantile 95 \
         --acquisition-quantile 99 --acquisition-table results/cadd_inpainting/acq.npz]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from NeuroADLib.diffusion.inpainting import (
    blended_latent,
    denoise_chains,
    inpainting_masks,
    kl_maps,
    noised_latents,
)
from NeuroADLib.evaluation.harness import CaseVolumes
from NeuroADLib.methods.base import load_method
from NeuroADLib.subject import Subject
from NeuroADLib.synthesis.acquisition import augment_acquisition
from NeuroADLib.training.data import load_split

ACQUISITION_SEED = 900_000  # far from the trainers' seeds (0 + ...) and the benchmarks' (1e6 + ...)


def masked_mean(z0: torch.Tensor, denoised: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Each position the mean of the chains whose mask holds it; z0 where no mask does."""
    keep = masks[:, None].float()
    count = keep.sum(0, keepdim=True)
    inpainted = (keep * denoised).sum(0, keepdim=True) / count.clamp_min(1)
    return torch.where(count > 0, inpainted, z0)


def upsampled(latent: torch.Tensor, brain: np.ndarray) -> np.ndarray:
    grid = torch.nn.functional.interpolate(latent[None, None].float(), size=brain.shape,
                                           mode="trilinear", align_corners=False)[0, 0]
    return grid.numpy() * brain


def scan_kl(loaded, kl_model, image: np.ndarray, brain: np.ndarray,
            subject: Subject) -> tuple[torch.Tensor, torch.Tensor]:
    """The scan's latent z0 and its KL_U at the levels of `kl_model` (covariates in)."""
    harmonised, _, _ = loaded.harmonise(image, brain)
    with torch.no_grad():
        z0 = kl_model.encode(harmonised)
        return z0, kl_maps(kl_model.diffusion, kl_model.denoiser(subject), z0,
                           kl_model.settings)


def acquisition_percentiles(loaded, kl_model, cohort: str, scans: int,
                            quantiles: list[float]) -> dict[float, torch.Tensor]:
    """Per quantile q, the q-th percentile of KL_U (at the levels of `kl_model`, covariates
    in) over `scans` training scans, each under one random acquisition."""
    split = load_split(cohort, "train")
    picks = np.random.default_rng(0).choice(len(split.images), scans, replace=False)
    kls = []
    for k, i in enumerate(picks):
        brain = split.masks[i] > 0
        acquired, _ = augment_acquisition(split.images[i], brain, ACQUISITION_SEED + k)
        kls.append(scan_kl(loaded, kl_model, acquired, brain,
                           Subject(split.ages[i], split.sexes[i]))[1])
        print(f"acquisition percentiles: scan {k + 1} of {scans}", flush=True)
    stacked = torch.stack(kls).float()
    return {q: torch.quantile(stacked, q / 100.0, dim=0) for q in quantiles}


def cached_acquisition_percentiles(table: Path, loaded, kl_model, cohort: str, scans: int,
                                   quantiles: list[float]) -> dict[float, torch.Tensor]:
    """`acquisition_percentiles`, read from `table` when it holds these scans, levels and
    quantiles."""
    names = {q: f"q{q:g}" for q in quantiles}
    levels = np.asarray(kl_model.settings.levels)
    if table.is_file():
        with np.load(table, allow_pickle=False) as stored:
            if (int(stored["scans"]) == scans and "levels" in stored
                    and np.array_equal(stored["levels"], levels)
                    and all(n in stored for n in names.values())):
                return {q: torch.from_numpy(stored[n]) for q, n in names.items()}
    computed = acquisition_percentiles(loaded, kl_model, cohort, scans, quantiles)
    table.parent.mkdir(parents=True, exist_ok=True)
    np.savez(table, scans=scans, levels=levels,
             **{names[q]: v.numpy() for q, v in computed.items()})
    return computed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--cases", required=True, help="grid case table")
    parser.add_argument("--out", required=True)
    parser.add_argument("--kl-levels", action="append", default=None,
                        help="LO:HI, levels whose KL ratio the kl map takes the maximum of "
                             "(repeat; default 50:500 and 250:750)")
    parser.add_argument("--kl-only", action="store_true", help="skip the chains")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--acquisition-cohort", help="cohort whose training scans, each under "
                        "a random acquisition, give the kl_acq maps' percentiles")
    parser.add_argument("--acquisition-scans", type=int, default=50)
    parser.add_argument("--acquisition-quantile", type=float, action="append", default=None,
                        help="percentile of the acquired scans' KL (repeat; default 95 and 99)")
    parser.add_argument("--acquisition-table", help="npz file the acquisition percentiles are "
                        "written to and read from (default OUT/acquisition_percentiles.npz)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spans = [tuple(int(v) for v in span.split(":"))
             for span in (args.kl_levels or ["50:500", "250:750"])]
    loaded = load_method("cadd", args.bundle)
    model = loaded.model
    deepest = max(hi for _, hi in spans)
    kl_model = load_method("cadd", args.bundle, {"t_int": deepest}).model
    volumes, out = CaseVolumes(args.cases), Path(args.out)
    # Each kl map: its name -> (the rows of the levels LO..HI, the ratio's denominator).
    denominators = {"max": kl_model.cohort_percentiles_at_levels()}
    if args.acquisition_cohort:
        quantiles = args.acquisition_quantile or [95.0, 99.0]
        table = Path(args.acquisition_table or out / "acquisition_percentiles.npz")
        acquired = cached_acquisition_percentiles(table, loaded, kl_model,
                                                  args.acquisition_cohort,
                                                  args.acquisition_scans, quantiles)
        for q, percentile in acquired.items():
            denominators[f"acq{q:g}"] = torch.maximum(denominators["max"], percentile)
    levels = kl_model.settings.levels
    kl_reads = {f"kl_{kind}_{lo}_{hi}": ([i for i, level in enumerate(levels)
                                          if lo <= level <= hi], denominator)
                for kind, denominator in denominators.items() for lo, hi in spans}
    names = list(kl_reads)
    if not args.kl_only:
        names += ["cadd", "cadd_masked_mean"]
    for name in names:
        (out / "maps" / name).mkdir(parents=True, exist_ok=True)
    for case in volumes.cases:
        if all((out / "maps" / name / f"{case['case']}.npy").is_file() for name in names):
            continue
        start = time.time()
        brain = volumes.read(case, "brain_mask") > 0
        subject = Subject(float(case["age"]) if case["age"] else None, case["sex"] or None)
        z0, kl = scan_kl(loaded, kl_model, volumes.read(case, "image"), brain, subject)
        maps = {name: upsampled((kl[rows] / denominator[rows]).amax(0), brain)
                for name, (rows, denominator) in kl_reads.items()}
        if not args.kl_only:
            with torch.no_grad():
                settings, denoiser = model.settings, model.denoiser(subject)
                chain_kl = kl_maps(model.diffusion, denoiser, z0, settings)
                masks = inpainting_masks(chain_kl, model.cohort_percentiles_at_levels(),
                                         settings.percentile)
                zu, _ = noised_latents(model.diffusion, z0, settings.levels, settings.seed)
                denoised = denoise_chains(model.diffusion, denoiser, zu, settings.levels,
                                          settings.respacing, settings.seed)
                reference = model.decode(z0, brain)
                for name, blend in (("cadd", blended_latent),
                                    ("cadd_masked_mean", masked_mean)):
                    healthy = model.decode(blend(z0, denoised, masks), brain)
                    maps[name] = np.abs(reference - healthy) * brain
        for name, values in maps.items():
            np.save(out / "maps" / name / f"{case['case']}.npy", values.astype(np.float16))
        print(case["case"], f"{time.time() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()

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
  thresholds), the maximum over levels LO..HI, upsampled trilinearly to the grid.

    python benchmarks/cadd_inpainting_maps.py --bundle NeuroADLib/models/bundled/cadd-ixi-2mm \
        --cases BENCH/synthetic/cases.csv --out results/cadd_inpainting/synthetic \
        [--kl-levels 50:500 --kl-levels 250:750] [--kl-only] [--threads 2]
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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spans = [tuple(int(v) for v in span.split(":"))
             for span in (args.kl_levels or ["50:500", "250:750"])]
    loaded = load_method("cadd", args.bundle)
    model = loaded.model
    deepest = max(hi for _, hi in spans)
    kl_model = load_method("cadd", args.bundle, {"t_int": deepest}).model
    volumes, out = CaseVolumes(args.cases), Path(args.out)
    names = [f"kl_max_{lo}_{hi}" for lo, hi in spans]
    if not args.kl_only:
        names += ["cadd", "cadd_masked_mean"]
    for name in names:
        (out / "maps" / name).mkdir(parents=True, exist_ok=True)
    for case in volumes.cases:
        if all((out / "maps" / name / f"{case['case']}.npy").is_file() for name in names):
            continue
        start = time.time()
        brain = volumes.read(case, "brain_mask") > 0
        harmonised, _, _ = loaded.harmonise(volumes.read(case, "image"), brain)
        subject = Subject(float(case["age"]) if case["age"] else None, case["sex"] or None)
        maps = {}
        with torch.no_grad():
            z0 = model.encode(harmonised)
            ratio = (kl_maps(kl_model.diffusion, kl_model.denoiser(subject), z0,
                             kl_model.settings) / kl_model.cohort_percentiles_at_levels())
            levels = kl_model.settings.levels
            for (lo, hi), name in zip(spans, names, strict=False):
                rows = [i for i, level in enumerate(levels) if lo <= level <= hi]
                maps[name] = upsampled(ratio[rows].amax(0), brain)
            if not args.kl_only:
                settings, denoiser = model.settings, model.denoiser(subject)
                kl = kl_maps(model.diffusion, denoiser, z0, settings)
                masks = inpainting_masks(kl, model.cohort_percentiles_at_levels(),
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

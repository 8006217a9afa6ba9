"""Does MAD-AD's mask head see the lesions?

MAD-AD restores only the latent positions its mask head flags (eq. 6). It starts from the clean
latent of the scan, read as the last level of the masked forward process, and a position the
head does not flag stays as it is, so at every reverse step until one is flagged the head reads
that clean latent at the step's level: a lesion the head never flags on the clean latent stays
in the pseudo-healthy image and out of the map. For the cases of a benchmark manifest, on
every modelled axial slice and at every level t of the reverse chain, the head's probability
for the clean latent at each latent brain position, split into positions that touch a lesion
and the others (healthy cases: all brain positions). Prints per level the share flagged
(probability above the bundle's mask threshold) of each and the AUROC of the probability as a
score for lesion against other brain positions (mean over the lesioned cases; 0.5: the head
does not tell them apart).

    python benchmarks/mad_ad_mask_head.py --bundle MODELS/mad_ad \
        --cases BENCH/synthetic/cases_10_subjects.csv
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from NeuroADLib.diffusion.process import respaced_levels
from NeuroADLib.evaluation import metrics
from NeuroADLib.evaluation.harness import CaseVolumes
from NeuroADLib.methods.base import load_method
from NeuroADLib.methods.mad_ad import latent_brain
from NeuroADLib.slices import brain_slices


@torch.no_grad()
def clean_latent_masks(model, image: np.ndarray, brain: np.ndarray, lesion: np.ndarray,
                       levels: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The mask-head probability of the clean latent at each of the reverse chain's `levels`,
    (levels, latent brain positions of the modelled slices), and which of those positions
    touch a lesion."""
    indices = brain_slices(brain)
    factor = model.autoencoder.downsampling
    z = model.encode(torch.from_numpy(image[indices, None].astype(np.float32)))
    in_brain = latent_brain(torch.from_numpy(brain[indices, None]), factor) > 0
    touches = latent_brain(torch.from_numpy(lesion[indices, None]), factor) > 0
    probability = [torch.sigmoid(model.denoiser(z, torch.full((len(z),), t))[1])[in_brain]
                   for t in levels]
    return torch.stack(probability).numpy(), touches[in_brain].numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--cases", required=True, help="a benchmark manifest (cases.csv)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    method = load_method("mad_ad", args.bundle)
    threshold = method.model.settings.mask_threshold
    volumes = CaseVolumes(args.cases)
    levels = respaced_levels(method.model.diffusion.num_timesteps, method.model.settings.steps)
    healthy, lesion_positions, other_positions, aurocs = [], [], [], []
    for case in volumes.cases:
        brain = volumes.read(case, "brain_mask")
        lesion = volumes.read(case, "lesion_mask")
        image, _, _ = method.harmonise(volumes.read(case, "image"), brain)
        probability, touches = clean_latent_masks(
            method.model, image, brain, lesion if lesion is not None else np.zeros_like(brain),
            levels)
        if lesion is None:
            healthy.append(probability > threshold)
            continue
        lesion_positions.append(probability[:, touches] > threshold)
        other_positions.append(probability[:, ~touches] > threshold)
        aurocs.append([metrics.voxel_auroc(p, touches) for p in probability])
    flagged = [np.concatenate(group, axis=1).mean(axis=1)
               for group in (healthy, lesion_positions, other_positions)]
    auroc = np.mean(aurocs, axis=0)
    print(f"{len(healthy)} healthy and {len(aurocs)} lesioned cases; mask threshold {threshold}"
          "\n\n| level t | flagged: healthy brain | lesion | other brain (lesioned cases) "
          "| AUROC lesion against other |\n|---|---|---|---|---|")
    for k, t in enumerate(levels):
        print(f"| {t} | {flagged[0][k]:.1%} | {flagged[1][k]:.1%} | {flagged[2][k]:.1%} "
              f"| {auroc[k]:.3f} |")


if __name__ == "__main__":
    main()

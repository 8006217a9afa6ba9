"""What MAD-AD's chain makes of a mask that finds the lesion.

MAD-AD restores only the latent positions its mask head flags (eq. 6). This separates the two
halves of the method: for the lesioned cases of a benchmark manifest, the map of eq. 8 when
the chain restores exactly the latent positions that touch the lesion (an oracle mask, read
from the label: a bound, not a method), next to the map when it restores what its mask head
flags (the method as shipped), both through the same code with the same noise. Prints the
mean voxel AP and AUROC of each inside the brain.

    python benchmarks/mad_ad_oracle_mask.py --bundle MODELS/mad_ad \
        --cases BENCH/synthetic/cases.csv --subjects 10
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from NeuroADLib.evaluation import metrics
from NeuroADLib.evaluation.harness import CaseVolumes
from NeuroADLib.methods.base import load_method
from NeuroADLib.methods.mad_ad import MADADModel, latent_brain
from NeuroADLib.slices import brain_slices


@torch.no_grad()
def chain_map(model: MADADModel, image: np.ndarray, brain: np.ndarray,
              restore: np.ndarray | None) -> np.ndarray:
    """Eq. 8's map on the grid with the chain restoring `restore` (a grid mask, pooled to the
    latent: positions that touch it) or, for None, what the mask head flags."""
    indices = brain_slices(brain)
    factor = model.autoencoder.downsampling
    slices, masks = image[indices], brain[indices]
    z = model.encode(torch.from_numpy(slices[:, None].astype(np.float32)))
    latent_mask = latent_brain(torch.from_numpy(masks[:, None]), factor)
    noises = model.step_noises(len(indices), tuple(z.shape[1:])).transpose(0, 1)
    oracle = None if restore is None else latent_brain(
        torch.from_numpy(restore[indices, None]), factor)
    final = model.masked_reverse(z, latent_mask, noises, oracle)
    pseudo = model.decode(final).clamp(0, 1)[:, 0].numpy()
    reference = (model.decode(z).clamp(0, 1)[:, 0].numpy()
                 if model.settings.reference == "reconstruction" else slices)
    anomaly = np.zeros_like(image, dtype=np.float32)
    anomaly[indices] = model.residual_map(pseudo, reference, masks)
    return anomaly


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--cases", required=True, help="a benchmark manifest (cases.csv)")
    parser.add_argument("--subjects", type=int, default=0,
                        help="only the first N subjects of the manifest (0: all)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    method = load_method("mad_ad", args.bundle)
    volumes = CaseVolumes(args.cases)
    subjects = list(dict.fromkeys(case["subject"] for case in volumes.cases))
    chosen = set(subjects[:args.subjects] if args.subjects else subjects)
    scores: dict[str, list[tuple[float, float]]] = {"oracle mask": [], "mask head": []}
    for case in volumes.cases:
        lesion = volumes.read(case, "lesion_mask")
        if case["subject"] not in chosen or lesion is None:
            continue
        brain = volumes.read(case, "brain_mask")
        image, _, _ = method.harmonise(volumes.read(case, "image"), brain)
        for name, restore in (("oracle mask", lesion), ("mask head", None)):
            anomaly = chain_map(method.model, image, brain, restore)
            scores[name].append((metrics.average_precision(anomaly, lesion, brain),
                                 metrics.voxel_auroc(anomaly, lesion, brain)))
    print(f"{len(scores['mask head'])} lesioned cases of {len(chosen)} subjects\n\n"
          "| chain restores | AP | AUROC |\n|---|---|---|")
    for name, rows in scores.items():
        ap, auroc = np.mean(rows, axis=0)
        print(f"| {name} | {ap:.3f} | {auroc:.3f} |")


if __name__ == "__main__":
    main()

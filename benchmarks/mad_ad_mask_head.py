"""Does MAD-AD's mask head see the lesions?

MAD-AD restores only the latent positions its mask head flags (eq. 6), so a lesion it does not
flag at the first reverse step, where the clean latent of the scan is read as the last level
of the masked forward process, stays in the pseudo-healthy image and out of the map. For the
cases of a benchmark manifest, on every modelled axial slice: the mask head's probability at
that first step for each latent brain position, split into positions that touch a lesion and
the others (healthy cases: all brain positions). Prints the share flagged (probability above
the bundle's mask threshold) of each, the mean probability, and the AUROC of the probability
as a score for lesion against non-lesion brain positions (0.5: the head does not tell them
apart).

    python benchmarks/mad_ad_mask_head.py --bundle MODELS/mad_ad \
        --cases BENCH/synthetic/cases_10_subjects.csv
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from NeuroADLib.evaluation import metrics
from NeuroADLib.evaluation.harness import CaseVolumes
from NeuroADLib.methods.base import load_method
from NeuroADLib.methods.mad_ad import latent_brain
from NeuroADLib.slices import brain_slices


@torch.no_grad()
def first_step_mask(model, image: np.ndarray, brain: np.ndarray, lesion: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The mask-head probability at the first reverse step for every latent brain position of
    the modelled slices, and which of those positions touch a lesion."""
    indices = brain_slices(brain)
    factor = model.autoencoder.downsampling
    x = torch.from_numpy(image[indices, None].astype(np.float32))
    z = model.encode(x)
    first = torch.full((len(z),), model.diffusion.num_timesteps - 1)
    probability = torch.sigmoid(model.denoiser(z, first)[1])
    in_brain = latent_brain(torch.from_numpy(brain[indices, None]), factor) > 0
    touches = latent_brain(torch.from_numpy(lesion[indices, None]), factor) > 0
    return probability[in_brain].numpy(), touches[in_brain].numpy()


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
    healthy, lesioned, aurocs = [], [], []
    for case in volumes.cases:
        brain = volumes.read(case, "brain_mask")
        lesion = volumes.read(case, "lesion_mask")
        image, _, _ = method.harmonise(volumes.read(case, "image"), brain)
        probability, touches = first_step_mask(
            method.model, image, brain, lesion if lesion is not None else np.zeros_like(brain))
        if lesion is None:
            healthy.append(probability)
            continue
        lesioned.append((probability[touches], probability[~touches]))
        aurocs.append(metrics.voxel_auroc(probability, touches))
    rows = [("healthy cases, brain", np.concatenate(healthy)),
            ("lesioned cases, lesion positions", np.concatenate([p for p, _ in lesioned])),
            ("lesioned cases, other brain", np.concatenate([o for _, o in lesioned]))]
    print(f"{len(healthy)} healthy and {len(lesioned)} lesioned cases; mask threshold "
          f"{threshold}\n\n| latent positions | flagged | mean probability |\n|---|---|---|")
    for name, values in rows:
        print(f"| {name} | {np.mean(values > threshold):.1%} | {values.mean():.3f} |")
    print(f"\nAUROC of the first-step probability, lesion against other brain positions, "
          f"mean over cases: {np.mean(aurocs):.3f}")


if __name__ == "__main__":
    main()

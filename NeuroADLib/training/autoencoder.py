"""Training the first-stage autoencoder on the healthy cohort (CADD section 4.1; LDM stage one).

Loss per step: L1 reconstruction + kl_weight * KL(q(z|x) || N(0, I)) + adversarial_weight *
least-squares patch-adversarial loss (after `adversarial_start` steps, so the autoencoder first
learns to reconstruct). A perceptual term needs ImageNet/MedicalNet backbone weights, which are
not available offline here; the manifest records that it was not used. Training runs on 64^3
patches with left-right flips: by default the very windows a whole volume is coded in at
inference (`patch_placement` "windows"), because GroupNorm's statistics depend on how much
background a patch holds, and a first stage trained on brain-centred patches ("brain", how the
bundled one was trained) reconstructs the inference windows too bright. With `decay_from` the
learning rate falls along a half cosine to zero (a constant rate lets the reconstruction's
brightness drift between checkpoints), and `init_from` fine-tunes a trained first stage of the
same architecture to this recipe instead of starting from scratch. Every step draws its
patch and noise from seeds derived from (seed, step), so a resumed run continues exactly as an
uninterrupted one.
With `harmonise` (the default for new models) the training scans are harmonised to the cohort's
intensity standard first, with `acquisition_copies` acquisition-augmented copies each, as every
method's inputs are at inference; the standard is saved beside the weights and the validation
figures are of harmonised scans. Checkpoints (weights as safetensors, optimiser states as
tensor-only torch files) are written every `checkpoint_every` steps and resumed automatically.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..evaluation.metrics import mae_psnr_ssim
from ..hashing import sha256
from ..networks.autoencoder import (
    AUTOENCODER_CONFIGS,
    AutoencoderConfig,
    build_autoencoder,
    build_discriminator,
    coding_windows,
    decode_volume,
    encode_volume,
    load_autoencoder,
)
from .harmonisation import training_cohort
from .loop import LoopSettings, cosine_decay, run_training, set_learning_rate
from .provenance import half_precision, write_manifest

PATCH_PLACEMENTS = ("windows", "brain")


@dataclass(frozen=True)
class AutoencoderTraining:
    steps: int = 6000  # about 110 min on 2 CPU cores (1.1 s per 64^3 step), 4 min on an H100
    patch: int = 64
    batch_size: int = 1
    learning_rate: float = 3e-4  # 1e-4 left the autoencoder far from converged in 4000 steps
    kl_weight: float = 1e-8  # the CADD authors' related code
    adversarial_weight: float = 1e-3  # idem
    adversarial_start: int = 1000
    checkpoint_every: int = 250
    log_every: int = 25
    seed: int = 0
    # The cohort's scans harmonised to its intensity standard, and acquisition-augmented copies
    # of every training scan added to the patch pool (the bundled first stage predates both:
    # its manifest's `training` has neither field).
    harmonise: bool = True
    acquisition_copies: int = 1
    # "windows": the windows of inference's sliding-window coding (`coding_windows`); "brain":
    # crops centred on random brain voxels (the bundled first stage, whose manifest predates
    # the field).
    patch_placement: str = "windows"
    # From this step on the learning rate falls along a half cosine to zero at `steps` (None:
    # constant). At a constant 3e-4 the reconstruction's global brightness drifts by about
    # +-0.02 between checkpoints (session 24), which a decaying rate lets settle.
    decay_from: int | None = None
    # A trained first stage of the same architecture whose weights this run starts from
    # (fine-tuning it to another recipe; the adversary starts afresh). None: from scratch.
    init_from: str | None = None

    def __post_init__(self) -> None:
        if self.patch_placement not in PATCH_PLACEMENTS:
            raise ValueError(f"patch_placement {self.patch_placement!r}: use one of "
                             f"{', '.join(PATCH_PLACEMENTS)}")
        if self.decay_from is not None and not 0 <= self.decay_from < self.steps:
            raise ValueError(f"decay_from {self.decay_from} must lie in [0, steps={self.steps})")


def window_patch(images: list[np.ndarray], windows: list[tuple[slice, ...]],
                 rng: np.random.Generator) -> np.ndarray:
    """One of `windows` (the volumes' `coding_windows`, computed once for their shared grid)
    of a random subject's volume, randomly flipped left-right (x is the last axis)."""
    image = images[int(rng.integers(len(images)))]
    patch = image[windows[int(rng.integers(len(windows)))]]
    return patch[..., ::-1].copy() if rng.random() < 0.5 else patch.copy()


def random_patch(images: list[np.ndarray], masks: list[np.ndarray], size: int,
                 rng: np.random.Generator) -> np.ndarray:
    """A size^3 crop centred on a random brain voxel of a random subject, randomly flipped
    left-right (x is the last axis)."""
    k = int(rng.integers(len(images)))
    image, mask = images[k], masks[k]
    centre = np.argwhere(mask)[int(rng.integers(int(mask.sum())))]
    start = [int(np.clip(c - size // 2, 0, n - size)) for c, n in zip(centre, image.shape,
                                                                     strict=True)]
    patch = image[tuple(slice(s, s + size) for s in start)]
    return patch[..., ::-1].copy() if rng.random() < 0.5 else patch.copy()


def starting_weights(folder: str | None, config_name: str) -> tuple[dict | None, dict | None]:
    """The float32 weights of the trained first stage in `folder`, refused unless it is of the
    architecture `config_name` names, and what the manifest records of them (its id, sha256
    and training record); (None, None) without a folder."""
    if folder is None:
        return None, None
    source, manifest = load_autoencoder(folder)
    if AutoencoderConfig.from_dict(manifest["config"]) != AUTOENCODER_CONFIGS[config_name]:
        raise UsageError(f"{folder} holds a first stage of another architecture "
                         f"({manifest['config']}) than --config {config_name}; start from a "
                         f"first stage trained with --config {config_name}.")
    weights = Path(folder) / "autoencoder.safetensors"
    record = {"id": manifest.get("id"), "sha256": sha256(weights),
              "training": manifest.get("training"),
              "training_command": manifest.get("training_command")}
    return {key: value.float() for key, value in source.state_dict().items()}, record


def kl_divergence(mu, sigma):
    """KL(N(mu, sigma^2) || N(0, 1)) summed over latent voxels, averaged over the batch."""
    import torch

    terms = mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2)) - 1
    return 0.5 * terms.flatten(1).sum(dim=1).mean()


def reconstruction_quality(autoencoder, images: list[np.ndarray], masks: list[np.ndarray],
                           device: str = "cpu") -> dict[str, float]:
    """Mean MAE / PSNR / SSIM inside the brain of whole-volume reconstructions (mean of z,
    coded window by window as at inference)."""
    import torch

    figures = []
    with torch.no_grad():
        for image, mask in zip(images, masks, strict=True):
            x = torch.from_numpy(image[None, None].astype(np.float32)).to(device)
            latent = encode_volume(autoencoder, x)
            recon = decode_volume(autoencoder, latent)[0, 0].cpu().numpy().clip(0, 1) * mask
            figures.append(mae_psnr_ssim(recon, image, mask))
    return {key: float(np.mean([f[key] for f in figures])) for key in figures[0]}


def train_autoencoder(cohort_dir: str | os.PathLike, out: str | os.PathLike,
                      config_name: str = "default",
                      training: AutoencoderTraining | None = None, device: str = "cpu",
                      log=print) -> Path:
    """Train (or resume) on `device` and write `out/autoencoder.safetensors` with its
    manifest. `cohort_dir` is a prepared cohort folder or its grid pack."""
    import torch
    from monai.losses import PatchAdversarialLoss
    from safetensors.torch import save_file

    training = training or AutoencoderTraining()
    cohort, out = Path(cohort_dir), Path(out)
    initial_state, initial = starting_weights(training.init_from, config_name)
    scans = training_cohort(cohort, training.harmonise, training.acquisition_copies,
                            training.seed, log)
    images, masks = scans.train.images, scans.train.masks
    torch.manual_seed(training.seed)
    autoencoder = build_autoencoder(AUTOENCODER_CONFIGS[config_name])
    if initial_state is not None:  # a resumed run then overwrites it from its checkpoint
        autoencoder.load_state_dict(initial_state)
    autoencoder = autoencoder.to(device)
    discriminator = build_discriminator().to(device)
    optimiser_g = torch.optim.Adam(autoencoder.parameters(), lr=training.learning_rate)
    optimiser_d = torch.optim.Adam(discriminator.parameters(), lr=training.learning_rate)
    adversarial = PatchAdversarialLoss(criterion="least_squares")

    windows = coding_windows(images[0].shape, training.patch)  # the cohort's grid

    def draw_patch(rng: np.random.Generator) -> np.ndarray:
        if training.patch_placement == "windows":
            return window_patch(images, windows, rng)
        return random_patch(images, masks, training.patch, rng)

    def step(number: int, rng: np.random.Generator, generator: torch.Generator) -> dict:
        rate = cosine_decay(number, training.learning_rate, training.decay_from, training.steps)
        for optimiser in (optimiser_g, optimiser_d):
            set_learning_rate(optimiser, rate)
        batch = np.stack([draw_patch(rng) for _ in range(training.batch_size)])
        x = torch.from_numpy(batch[:, None].astype(np.float32)).to(device)
        reconstruction, mu, sigma = autoencoder(x)
        l1 = (reconstruction - x).abs().mean()
        kl = kl_divergence(mu, sigma)
        loss = l1 + training.kl_weight * kl
        use_adversary = number >= training.adversarial_start
        if use_adversary:
            fake = discriminator(reconstruction.contiguous().float())[-1]
            loss = loss + training.adversarial_weight * adversarial(
                fake, target_is_real=True, for_discriminator=False)
        optimiser_g.zero_grad(set_to_none=True)
        loss.backward()
        optimiser_g.step()
        d_loss = torch.zeros((), device=device)
        if use_adversary:
            fake = discriminator(reconstruction.contiguous().detach())[-1]
            real = discriminator(x.contiguous().detach())[-1]
            d_loss = training.adversarial_weight * 0.5 * (
                adversarial(fake, target_is_real=False, for_discriminator=True)
                + adversarial(real, target_is_real=True, for_discriminator=True))
            optimiser_d.zero_grad(set_to_none=True)
            d_loss.backward()
            optimiser_d.step()
        return {"l1": l1.item(), "kl": kl.item(), "d": d_loss.item(), "lr": rate}

    began = time.perf_counter()
    run_training(out, {"autoencoder": autoencoder, "discriminator": discriminator},
                 {"g": optimiser_g, "d": optimiser_d}, step,
                 LoopSettings(training.steps, training.seed, training.checkpoint_every,
                              training.log_every), log)

    autoencoder.load_state_dict(half_precision(autoencoder.state_dict()))  # as shipped
    autoencoder.eval()
    quality = reconstruction_quality(autoencoder, scans.validation.images,
                                     scans.validation.masks, device)
    log(f"validation reconstruction inside the brain: {quality}")
    save_file(half_precision(autoencoder.state_dict()), str(out / "autoencoder.safetensors"))
    if scans.standard is not None:
        scans.standard.save(out)
    write_manifest(
        out, id=f"autoencoder-{config_name}-ixi-2mm", method="autoencoder", version="1",
        config=AUTOENCODER_CONFIGS[config_name].to_dict(), config_name=config_name,
        training=asdict(training), initial_weights=initial,
        perceptual_loss="not used (no backbone weights offline)",
        weights="float16",
        device=device, seconds=round(time.perf_counter() - began, 1),
        training_data={"cohort": cohort.name, "train": scans.train_subjects,
                       "validation": scans.validation.subjects,
                       "harmonised": scans.standard is not None},
        metrics={"validation_reconstruction": quality, "steps": training.steps},
    )
    return out

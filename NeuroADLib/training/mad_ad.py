"""Training MAD-AD on a prepared healthy cohort, in one resumable command:

1. the cohort's training scans harmonised to its intensity standard, with acquisition-augmented
   copies (the scanner-robustness path every bundle shares);
2. a 2D KL autoencoder on their axial brain slices (L1 + KL + patch-adversarial; the paper's
   VAE is 8x with a perceptual term, here 4x because the 2 mm slices are 112 x 96, and no
   perceptual term: its backbone weights are not available offline), or a trained one reused
   as it is (`autoencoder_from`), so that UNet settings compare on the same latents;
3. the masked-diffusion UNet on the frozen autoencoder's latents (section 3.1): random masks
   over latent patches (ratio ~ U[0, 0.4], patch sides from {1, 2, 4, 8}, brain only), only
   masked positions noised (eq. 2), loss ||z0 - f_z0||^2 + lambda BCE(M, f_M) (eq. 5);
   optionally (not in the paper) some samples' masked positions start from foreign content
   before they are noised, so that the head also learns to find content that does not
   belong: another slice's latent (`foreign_fill`), or the latent of the same slice with a
   fluid-driven pseudo-pathology, whose footprint joins the mask (`pathology_fill`,
   training/pathology_slices.py), noised or left clean as inference meets it
   (`pathology_noised`);
4. the bundle: both stages, the intensity standard, and the healthy calibration on the
   harmonised validation split.

Each stage checkpoints and resumes (training/loop.py); a finished stage is not retrained.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..diffusion.process import DiffusionProcess
from ..errors import UsageError
from ..evaluation.metrics import mae_psnr_ssim
from ..hashing import sha256
from ..methods.mad_ad import (
    AUTOENCODER_FOLDER,
    DENOISER_FOLDER,
    MADADSettings,
    latent_brain,
    load_mad_ad,
    mad_ad_diffusion,
)
from ..networks.autoencoder import (
    AutoencoderConfig,
    build_autoencoder,
    build_discriminator,
    load_autoencoder,
)
from ..networks.masked_unet import MASKED_UNET_CONFIGS, MaskedUNet, MaskedUNetConfig
from ..slices import brain_slices
from .data import CohortSplit
from .loop import LoopSettings, run_training
from .pathology_slices import PathologySlices, PathologySliceSettings, encode_pathology_slices
from .provenance import half_precision, write_manifest
from .slice_data import (
    SliceSet,
    TrainingLog,
    calibrate_on_validation,
    prepare_slices,
    write_slice_bundle_manifest,
)

SLICE_AUTOENCODER_CONFIGS = {
    # 112 x 96 slices -> 4 x 28 x 24 latents (4x, 4 channels), sized for 2 CPU cores
    "default": AutoencoderConfig(channels=(16, 32, 64), latent_channels=4, norm_num_groups=8,
                                 spatial_dims=2),
    # the LDM "KL-f8"-like scale of the paper (8x, 4 channels), for a GPU and 1 mm slices
    "paper": AutoencoderConfig(channels=(128, 256, 512, 512), num_res_blocks=2,
                               latent_channels=4, norm_num_groups=32,
                               attention_at_deepest_level=True, spatial_dims=2),
    "tiny": AutoencoderConfig(channels=(8, 8, 8), latent_channels=4, norm_num_groups=4,
                              spatial_dims=2),
}


@dataclass(frozen=True)
class SliceAutoencoderTraining:
    steps: int = 2000  # about 20 min on 2 CPU cores (0.6 s per batch of 8, measured)
    batch_size: int = 8
    learning_rate: float = 2e-4
    kl_weight: float = 1e-6  # MONAI's 2D latent diffusion tutorial
    adversarial_weight: float = 0.01  # idem
    adversarial_start: int = 800


@dataclass(frozen=True)
class MaskedDiffusionTraining:
    steps: int = 5000  # about 30 min on 2 CPU cores (0.35 s per batch of 16, measured)
    batch_size: int = 16  # 96 in the paper
    learning_rate: float = 5e-4  # AdamW, the paper's
    mask_ratio_max: float = 0.4  # ratio ~ U[0, 0.4]
    patch_sizes: tuple[int, ...] = (1, 2, 4, 8)
    mask_loss_weight: float = 1e-3  # lambda of eq. 5 (the authors' code)
    # Share of training samples whose masked positions start from another slice's latent at
    # the same positions instead of their own (then noised by eq. 2 as usual), so that the
    # mask head learns to find content that does not belong, not only Gaussian noise.
    # 0: the paper.
    foreign_fill: float = 0.0
    # Share of training samples drawn from the slices a pseudo-pathology crosses, whose lesion
    # footprint joins the mask and starts from the lesioned slice's latent, so that the mask
    # head learns to flag lesion-like content. 0: the paper.
    pathology_fill: float = 0.0
    # Whether eq. 2 noises the footprint (True) or leaves it the clean lesioned latent at every
    # level (False), as inference meets a lesion: clean, from the chain's first step on.
    pathology_noised: bool = True
    pathology: PathologySliceSettings = PathologySliceSettings()

    def __post_init__(self) -> None:
        if self.foreign_fill > 0 and self.pathology_fill > 0:
            raise ValueError("foreign_fill and pathology_fill are alternatives: give one")


@dataclass(frozen=True)
class MADADTraining:
    config: str = "default"
    autoencoder: SliceAutoencoderTraining = SliceAutoencoderTraining()
    diffusion: MaskedDiffusionTraining = MaskedDiffusionTraining()
    inference: MADADSettings = MADADSettings()  # what the bundle is calibrated and run with
    acquisition_copies: int = 1
    checkpoint_every: int = 250
    log_every: int = 50
    seed: int = 0
    # A trained slice autoencoder (a MAD-AD bundle's autoencoder/ folder) used frozen instead
    # of training one. None: train it.
    autoencoder_from: str | None = None
    # The masked UNet's channel widths. None: those of the named `config`.
    denoiser_channels: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        levels = len(MASKED_UNET_CONFIGS[self.config].channels)
        if self.denoiser_channels is not None and len(self.denoiser_channels) != levels:
            raise ValueError(f"denoiser_channels {self.denoiser_channels}: the {self.config} "
                             f"UNet has {levels} levels, so give {levels} widths")

    def denoiser_config(self) -> MaskedUNetConfig:
        config = MASKED_UNET_CONFIGS[self.config]
        if self.denoiser_channels is None:
            return config
        return replace(config, channels=tuple(self.denoiser_channels))


def random_patch_mask(brain: torch.Tensor, rng: np.random.Generator, ratio_max: float,
                      patch_sizes: tuple[int, ...]) -> torch.Tensor:
    """MAD-AD's training masks (section 4.1) for a batch of latent brain masks (n, 1, h, w):
    per sample a ratio ~ U[0, ratio_max] of the cells of a grid of patches whose sides are
    drawn independently from `patch_sizes`, restricted to the brain."""
    n, _, h, w = brain.shape
    masks = np.zeros((n, 1, h, w), np.float32)
    for k in range(n):
        ph, pw = (int(rng.choice(patch_sizes)) for _ in range(2))
        rows, cols = -(-h // ph), -(-w // pw)
        chosen = rng.permutation(rows * cols) < round(rng.uniform(0, ratio_max) * rows * cols)
        cells = chosen.reshape(rows, cols).astype(np.float32)
        masks[k, 0] = np.kron(cells, np.ones((ph, pw), np.float32))[:h, :w]
    return torch.from_numpy(masks).to(brain.device) * brain


def foreign_start(z0: torch.Tensor, donors: torch.Tensor, noised: torch.Tensor,
                  chosen: torch.Tensor) -> torch.Tensor:
    """Where the masked forward process starts: z0, except at the masked positions of the
    `chosen` samples (a bool per sample), which hold the donors' latents there."""
    swapped = noised * chosen.view(-1, 1, 1, 1).to(noised.dtype)
    return z0 + swapped * (donors - z0)


def masked_diffusion_loss(denoiser: MaskedUNet, diffusion, z0: torch.Tensor,
                          noised: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                          mask_loss_weight: float, start: torch.Tensor | None = None,
                          diffused: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 5: ||z0 - f_z0(z_t, t)||^2 + lambda BCE(M, f_M(z_t, t)), z_t from eq. 2 applied
    to `start` (z0 itself unless foreign content fills the masked positions) at the positions
    `diffused` (the mask M = `noised` itself unless clean lesion footprints join M)."""
    zt = diffusion.q_sample(z0 if start is None else start, t, noise,
                            noised if diffused is None else diffused)
    estimate, logit = denoiser(zt, t)
    mse = torch.nn.functional.mse_loss(estimate, z0)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logit, noised)
    return mse + mask_loss_weight * bce, {"mse": mse.item(), "bce": bce.item()}


def train_slice_autoencoder(slices: SliceSet, out: Path, config: AutoencoderConfig,
                            training: MADADTraining, device: str, log=print) -> torch.nn.Module:
    from monai.losses import PatchAdversarialLoss

    settings = training.autoencoder
    torch.manual_seed(training.seed)
    autoencoder = build_autoencoder(config).to(device)
    discriminator = build_discriminator(spatial_dims=2).to(device)
    optimiser_g = torch.optim.Adam(autoencoder.parameters(), lr=settings.learning_rate)
    optimiser_d = torch.optim.Adam(discriminator.parameters(), lr=settings.learning_rate)
    adversarial = PatchAdversarialLoss(criterion="least_squares")

    def step(number: int, rng: np.random.Generator, generator: torch.Generator) -> dict:
        rows = rng.integers(len(slices.pairs), size=settings.batch_size)
        x, _ = slices.batch(rows, rng.random(settings.batch_size) < 0.5)
        x = x.to(device)
        reconstruction, mu, sigma = autoencoder(x)
        l1 = (reconstruction - x).abs().mean()
        kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2)) - 1).flatten(1).sum(
            1).mean()
        loss = l1 + settings.kl_weight * kl
        use_adversary = number >= settings.adversarial_start
        if use_adversary:
            loss = loss + settings.adversarial_weight * adversarial(
                discriminator(reconstruction.contiguous())[-1], target_is_real=True,
                for_discriminator=False)
        optimiser_g.zero_grad(set_to_none=True)
        loss.backward()
        optimiser_g.step()
        d_loss = torch.zeros(())
        if use_adversary:
            d_loss = settings.adversarial_weight * 0.5 * (
                adversarial(discriminator(reconstruction.detach().contiguous())[-1],
                            target_is_real=False, for_discriminator=True)
                + adversarial(discriminator(x.contiguous())[-1], target_is_real=True,
                              for_discriminator=True))
            optimiser_d.zero_grad(set_to_none=True)
            d_loss.backward()
            optimiser_d.step()
        return {"l1": l1.item(), "kl": kl.item(), "d": d_loss.item()}

    run_training(out, {"autoencoder": autoencoder, "discriminator": discriminator},
                 {"g": optimiser_g, "d": optimiser_d}, step,
                 LoopSettings(settings.steps, training.seed, training.checkpoint_every,
                              training.log_every), log)
    autoencoder.load_state_dict(half_precision(autoencoder.state_dict()))  # as shipped
    return autoencoder.eval()


@torch.no_grad()
def encode_slices(autoencoder, slices: SliceSet, device: str, batch: int = 64
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent means and latent brain masks of every slice in the pool."""
    latents, brains = [], []
    for start in range(0, len(slices.pairs), batch):
        rows = np.arange(start, min(start + batch, len(slices.pairs)))
        x, mask = slices.batch(rows, np.zeros(len(rows), bool))
        latents.append(autoencoder.encode(x.to(device))[0].cpu())
        brains.append(latent_brain(mask, autoencoder.downsampling))
    return torch.cat(latents), torch.cat(brains)


def pathology_start(z0: torch.Tensor, noised: torch.Tensor, lesioned: torch.Tensor,
                    footprints: torch.Tensor, chosen: torch.Tensor, noise_footprints: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(start, mask, diffused) of eq. 2 for a batch where the `chosen` samples carry a
    pseudo-pathology: their lesion footprints join the mask and start from the lesioned
    latents there; eq. 2 noises the whole mask, or, without `noise_footprints`, all of it but
    the footprints, which stay the clean lesioned latent."""
    footprints = footprints * chosen.view(-1, 1, 1, 1).to(footprints.dtype)
    mask = torch.maximum(noised, footprints)
    diffused = mask if noise_footprints else noised * (1.0 - footprints)
    return foreign_start(z0, lesioned, footprints, chosen), mask, diffused


def train_masked_diffusion(latents: torch.Tensor, brains: torch.Tensor, out: Path,
                           training: MADADTraining, device: str, log=print,
                           pathology: PathologySlices | None = None) -> MaskedUNet:
    """Train (or resume) the masked UNet on scaled latents; `pathology` (scaled alike) is
    needed when `training.diffusion.pathology_fill` is above 0."""
    settings = training.diffusion
    if settings.pathology_fill > 0 and pathology is None:
        raise ValueError("pathology_fill needs the pseudo-pathological slices")
    process = DiffusionProcess(mad_ad_diffusion())
    torch.manual_seed(training.seed)
    denoiser = MaskedUNet(training.denoiser_config()).to(device)
    optimiser = torch.optim.AdamW(denoiser.parameters(), lr=settings.learning_rate)

    def step(number: int, rng: np.random.Generator, generator: torch.Generator) -> dict:
        rows = torch.from_numpy(rng.integers(len(latents), size=settings.batch_size))
        if settings.pathology_fill > 0:
            chosen = torch.from_numpy(rng.random(settings.batch_size) < settings.pathology_fill)
            picks = torch.from_numpy(rng.integers(len(pathology.rows), size=settings.batch_size))
            rows = torch.where(chosen, pathology.rows[picks], rows)
        z0, brain = latents[rows].to(device), brains[rows].to(device)
        noised = random_patch_mask(brain, rng, settings.mask_ratio_max, settings.patch_sizes)
        start, diffused = None, None
        if settings.pathology_fill > 0:
            start, noised, diffused = pathology_start(
                z0, noised, pathology.latents[picks].to(device),
                pathology.footprints[picks].to(device), chosen.to(device),
                settings.pathology_noised)
        if settings.foreign_fill > 0:
            chosen = torch.from_numpy(rng.random(settings.batch_size) < settings.foreign_fill)
            donors = latents[torch.from_numpy(rng.integers(len(latents),
                                                           size=settings.batch_size))]
            start = foreign_start(z0, donors.to(device), noised, chosen.to(device))
        t = torch.randint(process.num_timesteps, (settings.batch_size,), generator=generator)
        noise = torch.randn(z0.shape, generator=generator).to(device)
        loss, parts = masked_diffusion_loss(denoiser, process, z0, noised, t.to(device),
                                            noise, settings.mask_loss_weight, start, diffused)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        return parts

    run_training(out, {"masked_unet": denoiser}, {"adamw": optimiser}, step,
                 LoopSettings(settings.steps, training.seed, training.checkpoint_every,
                              training.log_every), log)
    return denoiser.eval()


def train_mad_ad(cohort_dir: str | os.PathLike, out: str | os.PathLike,
                 training: MADADTraining | None = None, device: str = "cpu",
                 log=print) -> Path:
    """Train (or resume) both stages and write the calibrated bundle to `out`."""
    from safetensors.torch import save_file

    training = training or MADADTraining()
    cohort, out = Path(cohort_dir), Path(out)
    reused = reused_autoencoder(training.autoencoder_from) if training.autoencoder_from else None
    record = TrainingLog(log)
    data = prepare_slices(cohort, training.acquisition_copies, training.seed, record)
    slices, validation = data.slices, data.validation

    ae_folder = out / AUTOENCODER_FOLDER
    if reused is None:
        ae_config = SLICE_AUTOENCODER_CONFIGS[training.config]
        autoencoder = train_slice_autoencoder(slices, ae_folder, ae_config, training, device,
                                              record)
        provenance = {"id": f"mad-ad-autoencoder-{training.config}-ixi-2mm",
                      "training": asdict(training.autoencoder)}
    else:
        autoencoder, ae_config, source = reused
        autoencoder = autoencoder.to(device)
        ae_folder.mkdir(parents=True, exist_ok=True)
        provenance = {"id": source["id"], "training": source["training"], "reused_from": source}
        record(f"autoencoder: reused from {training.autoencoder_from} (sha256 "
               f"{source['sha256'][:12]}), frozen")
    quality = slice_reconstruction_quality(autoencoder, validation, device)
    record(f"autoencoder: healthy validation reconstruction inside the brain {quality}")
    save_file(half_precision(autoencoder.state_dict()), str(ae_folder /
                                                            "autoencoder.safetensors"))
    write_manifest(ae_folder, **provenance, method="autoencoder-2d",
                   config=ae_config.to_dict(), weights="float16",
                   perceptual_loss="not used (no backbone weights offline)",
                   metrics={"validation_reconstruction": quality})

    latents, brains = encode_slices(autoencoder.to(device), slices, device)
    scale = float(1.0 / latents.std())
    pathology = None
    if training.diffusion.pathology_fill > 0:
        pathology = encode_pathology_slices(autoencoder, slices, training.diffusion.pathology,
                                            device, record).scaled(scale)
    dn_folder = out / DENOISER_FOLDER
    denoiser = train_masked_diffusion(latents * scale, brains, dn_folder, training, device,
                                      record, pathology)
    save_file(half_precision(denoiser.state_dict()), str(dn_folder / "masked_unet.safetensors"))
    write_manifest(dn_folder, id=f"mad-ad-denoiser-{training.config}-ixi-2mm",
                   method="masked-unet", config=denoiser.config.to_dict(),
                   diffusion=mad_ad_diffusion().to_dict(), latent_scale=scale,
                   training=asdict(training.diffusion), weights="float16")

    settings = training.inference
    (out / "manifest.json").write_text(json.dumps({"inference": asdict(settings),
                                                   "spacing_mm": 2.0}))
    data.standard.save(out)
    model = load_mad_ad(out).to(device)
    validated = calibrate_on_validation(model, validation, out, "calibration_mad_ad")
    record(validated.describe())
    write_slice_bundle_manifest(
        out, id="mad-ad-ixi-2mm", method="mad_ad",
        description="MAD-AD (masked latent diffusion, Beizaee et al. 2025) on the axial "
                    "slices of the 2 mm MNI grid, trained on healthy IXI subjects harmonised "
                    "to their intensity standard, with acquisition-augmented copies.",
        training=training, settings=settings, device=device, data=data, cohort=cohort,
        validated=validated, record=record,
        metrics={"autoencoder_validation_reconstruction": quality})
    return out


def reused_autoencoder(folder: str) -> tuple[torch.nn.Module, AutoencoderConfig, dict]:
    """The trained slice autoencoder in `folder`, its architecture and what a bundle built on
    it records of it (id, sha256, training record), refused unless it is a 2D autoencoder
    whose weights match the sha256 its manifest lists."""
    folder = Path(folder)
    weights = folder / "autoencoder.safetensors"
    if not (folder / "manifest.json").is_file() or not weights.is_file():
        raise UsageError(f"{folder} holds no trained autoencoder (manifest.json and "
                         "autoencoder.safetensors); give a MAD-AD bundle's autoencoder/ folder.")
    manifest = json.loads((folder / "manifest.json").read_text())
    if manifest.get("method") != "autoencoder-2d":
        raise UsageError(f"{folder} holds a {manifest.get('method')!r} first stage; MAD-AD "
                         "needs a slice autoencoder (a MAD-AD bundle's autoencoder/ folder).")
    digest = sha256(weights)
    if digest != manifest.get("files", {}).get(weights.name, {}).get("sha256"):
        raise UsageError(f"{weights} does not match the sha256 its manifest records; "
                         "re-fetch or retrain it.")
    autoencoder, _ = load_autoencoder(folder)  # only weights that match their manifest
    record = {"folder": str(folder), "id": manifest.get("id"), "sha256": digest,
              "training": manifest.get("training"),
              "training_command": manifest.get("training_command")}
    return autoencoder, AutoencoderConfig.from_dict(manifest["config"]), record


@torch.no_grad()
def slice_reconstruction_quality(autoencoder, split: CohortSplit, device: str
                                 ) -> dict[str, float]:
    """Mean MAE / PSNR / SSIM inside the brain of volumes coded slice by slice."""
    figures = []
    for image, mask in zip(split.images, split.masks, strict=True):
        indices = brain_slices(mask)
        x = torch.from_numpy(image[indices][:, None].astype(np.float32)).to(device)
        recon = np.zeros_like(image)
        recon[indices] = autoencoder.decode(autoencoder.encode(x)[0]).clamp(0, 1)[:, 0].cpu()
        figures.append(mae_psnr_ssim(recon * mask, image, mask))
    return {key: float(np.mean([f[key] for f in figures])) for key in figures[0]}

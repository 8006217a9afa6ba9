"""Training the second stage of CADD: a latent DDPM (T = 1000, linear beta 0.0015 -> 0.0195,
epsilon prediction with learned variance, hybrid loss) whose backbone is the Latte-style
transformer conditioned on age and sex.

Latents are the autoencoder's means for the cohort's training scans, harmonised to the cohort's
intensity standard with acquisition-augmented copies (`harmonise`, `acquisition_copies`; the
bundled transformer predates both), encoded once (cached beside the checkpoint) and scaled to
unit variance (the scale factor is stored). Covariates are dropped for a random 10% of samples
(and always for subjects without age or sex), so the same model also runs without covariates
for the paper's ablation and the LDM baselines. Seeded per step and checkpointed like the
autoencoder, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..diffusion import GaussianDiffusion, hybrid_loss
from ..models.weights import save_weights
from ..networks.autoencoder import encode_image, load_autoencoder
from ..networks.latte import LATTE_CONFIGS, TRANSFORMER_WEIGHTS, LatteTransformer
from .harmonisation import training_cohort
from .loop import LoopSettings, run_training
from .provenance import CHECKPOINT, half_precision, sha256, write_manifest

LATENTS_FILE = "latents.safetensors"


@dataclass(frozen=True)
class LatentDiffusionTraining:
    steps: int = 6000  # about 40 min on 2 CPU cores (0.37 s per batch of 8, measured)
    batch_size: int = 8
    learning_rate: float = 1e-4
    covariate_dropout: float = 0.1
    vlb_weight: float = 1e-3
    harmonise: bool = True
    acquisition_copies: int = 1
    checkpoint_every: int = 500
    log_every: int = 50
    seed: int = 0


def encode(autoencoder, images: list[np.ndarray], device: str = "cpu") -> torch.Tensor:
    """Latent means of whole grid volumes, stacked (N, C, D, H, W) on `device`."""
    return torch.cat([encode_image(autoencoder, image, device=device) for image in images])


def cached_tensors(path: Path, key: dict, compute) -> dict[str, torch.Tensor]:
    """The tensors kept at `path` when they were made from what `key` describes (the file's
    metadata), else `compute()`d (a dict of tensors) and kept there: work a resumed run
    skips."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    metadata = {name: str(value) for name, value in key.items()}
    if path.is_file():
        with safe_open(str(path), "pt") as handle:
            if handle.metadata() == metadata:
                return load_file(str(path))
    tensors = {name: tensor.cpu().contiguous() for name, tensor in compute().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return tensors


def cached_latents(path: Path, autoencoder_sha256: str, subjects: list[str], compute,
                   scans: str = "as stored") -> torch.Tensor:
    """The training scans' latents, encoded once and kept beside the checkpoint (keyed by the
    autoencoder's sha256, the subjects and how the `scans` were prepared), so a resumed run
    skips the encoding."""
    key = {"autoencoder_sha256": autoencoder_sha256, "subjects": ",".join(subjects),
           "scans": scans}
    return cached_tensors(path, key, lambda: {"latents": compute()})["latents"]


def covariates_of(rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(age, sex as +1 F / -1 M, known) tensors; unknown covariates are zeros with known 0."""
    ages = torch.tensor([float(r["age"]) if r["age"] else 0.0 for r in rows])
    sexes = torch.tensor([1.0 if r["sex"] == "F" else -1.0 if r["sex"] == "M" else 0.0
                          for r in rows])
    known = torch.tensor([bool(r["age"]) and r["sex"] in ("F", "M") for r in rows])
    return ages, sexes, known


def train_latent_diffusion(cohort_dir: str | os.PathLike, autoencoder_dir: str | os.PathLike,
                           out: str | os.PathLike, config_name: str = "default",
                           training: LatentDiffusionTraining | None = None,
                           device: str = "cpu", log=print) -> Path:
    """Train (or resume) on `device`; `cohort_dir` is a prepared cohort folder or its grid
    pack. Random draws come from CPU generators, so the data order does not depend on the
    device."""
    training = training or LatentDiffusionTraining()
    cohort, out = Path(cohort_dir), Path(out)
    checkpoint = out / CHECKPOINT
    checkpoint.mkdir(parents=True, exist_ok=True)
    autoencoder, ae_manifest = load_autoencoder(autoencoder_dir)
    ae_sha256 = sha256(Path(autoencoder_dir) / "autoencoder.safetensors")
    scans = training_cohort(cohort, training.harmonise, training.acquisition_copies,
                            training.seed, log)
    train = scans.train
    prepared = (f"harmonised={training.harmonise} copies={training.acquisition_copies} "
                f"seed={training.seed}")
    latents = cached_latents(checkpoint / LATENTS_FILE, ae_sha256, train.subjects,
                             lambda: encode(autoencoder.to(device), train.images, device),
                             prepared)
    latents = latents.to(device)
    scale = float(1.0 / latents.std())
    latents = latents * scale
    ages, sexes, known = (v.to(device) for v in covariates_of(train.rows))
    config = LATTE_CONFIGS[config_name].for_latent(latents.shape[1], tuple(latents.shape[2:]))
    torch.manual_seed(training.seed)
    model = LatteTransformer(config).to(device)
    diffusion = GaussianDiffusion()
    optimiser = torch.optim.Adam(model.parameters(), lr=training.learning_rate)

    def step(number: int, rng: np.random.Generator, generator: torch.Generator) -> dict:
        pick = torch.randint(len(latents), (training.batch_size,), generator=generator)
        t = torch.randint(diffusion.num_timesteps, (training.batch_size,), generator=generator)
        noise = torch.randn(latents[pick].shape, generator=generator).to(device)
        dropped = torch.rand(training.batch_size, generator=generator) < training.covariate_dropout
        pick, t = pick.to(device), t.to(device)
        keep = known[pick] & ~dropped.to(device)
        z0 = latents[pick]
        zt = diffusion.q_sample(z0, t, noise)
        output = model(zt, t, ages[pick], sexes[pick], keep)
        loss = hybrid_loss(diffusion, output, z0, zt, t, noise, training.vlb_weight)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        return {"loss": loss.item()}

    began = time.perf_counter()
    history = run_training(out, {"transformer": model}, {"adam": optimiser}, step,
                           LoopSettings(training.steps, training.seed,
                                        training.checkpoint_every, training.log_every), log)
    save_weights(half_precision(model.state_dict()), out, TRANSFORMER_WEIGHTS)
    write_manifest(
        out, id=f"cadd-transformer-{config_name}-ixi-2mm", method="cadd-transformer",
        version="1", config=config.to_dict(), config_name=config_name,
        diffusion=diffusion.to_dict(), latent_scale=scale, training=asdict(training),
        autoencoder={"id": ae_manifest["id"], "sha256": ae_sha256},
        device=device, seconds=round(time.perf_counter() - began, 1), weights="float16",
        training_data={"cohort": cohort.name, "train": scans.train_subjects,
                       "harmonised": training.harmonise},
        metrics={"final_loss": float(np.mean([h["loss"] for h in history[-100:]])),
                 "steps": training.steps},
    )
    return out

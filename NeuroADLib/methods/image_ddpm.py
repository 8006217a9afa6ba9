"""The image-space DDPM that THOR and AutoDDPM share: its bundle, its reverse chain from a
noise level, and noise drawn per slice.

The network predicts the noise eps of x_t (T = 1000, linear betas 1e-4 -> 0.02, as both
papers' code). Images enter it on [-1, 1] (2 x - 1 of the grid's [0, 1] intensities). A chain
runs from a start level down to the clean image on the levels `stride` apart (`chain_levels`);
each step is a DDIM step (Song et al. 2021 eq. 12) with `eta`: eta = 1 with stride 1 is the
ancestral DDPM chain of the papers (the posterior with variance beta~), a larger stride a
respaced chain (eta = 0: deterministic DDIM).

Noise is drawn per slice from a generator seeded by (seed, slice index), so that a slice's
result does not depend on which other slices share its batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..diffusion.noise import SimplexNoise, gaussian_noise
from ..diffusion.process import DiffusionConfig, DiffusionProcess
from ..models.weights import load_weights
from ..networks.diffusion_unet import DiffusionUNet, DiffusionUNetConfig
from ..postprocessing import filtered_in_eroded_brain
from ..progress import StepCallback
from ..slices import map_slices, slice_batch_size
from ..subject import UNKNOWN, Subject

NETWORK_FOLDER, WEIGHTS_STEM = "network", "ddpm"
NOISES = ("gaussian", "simplex")


def image_ddpm_diffusion() -> DiffusionConfig:
    """T = 1000, linear betas 1e-4 -> 0.02 (MONAI's and the papers' default), epsilon."""
    return DiffusionConfig(num_timesteps=1000, schedule="linear", beta_start=1e-4,
                           beta_end=2e-2, prediction_type="epsilon")


def to_network(x: torch.Tensor) -> torch.Tensor:
    return 2.0 * x - 1.0


def from_network(x: torch.Tensor) -> torch.Tensor:
    return (x + 1.0) / 2.0


def initial_noise(kind: str, shape: tuple[int, ...], t: torch.Tensor,
                  generator: torch.Generator) -> torch.Tensor:
    """The forward process's noise: Gaussian (the papers' default) or simplex."""
    if kind == "gaussian":
        return gaussian_noise(shape, generator)
    if kind == "simplex":
        return SimplexNoise().sample(shape, t, generator)
    raise ValueError(f"Unknown noise {kind!r}; noises: {', '.join(NOISES)}.")


def chain_levels(t_start: int, stride: int) -> list[int]:
    """The levels a chain from `t_start` visits, `stride` apart, down to the last one >= 0
    (it then steps to the clean image): 350 with stride 10 is 350, 340, ..., 10, 0."""
    if stride < 1 or t_start < 0:
        raise ValueError(f"A chain needs t_start >= 0 and stride >= 1, not {t_start}, {stride}")
    return list(range(t_start, -1, -stride))


def steps_of(levels: list[int]) -> list[tuple[int, int]]:
    """(t, t_prev) for every step of a chain over `levels`; the last lands on -1, the clean
    image."""
    return list(zip(levels, [*levels[1:], -1], strict=True))


class SliceNoise:
    """Noise per slice: slice z draws from its own generator, seeded by (seed, z), in the
    order the chain asks for it."""

    def __init__(self, seed: int, kind: str = "gaussian") -> None:
        self.seed, self.kind = seed, kind
        self.generators: dict[int, torch.Generator] = {}

    def _generator(self, z: int) -> torch.Generator:
        if z not in self.generators:
            self.generators[z] = torch.Generator().manual_seed(self.seed * 100_003 + z)
        return self.generators[z]

    def initial(self, slices: np.ndarray, shape: tuple[int, int], t: int) -> torch.Tensor:
        """The noise that takes slices `slices` (their z indices) to level t: (n, 1, y, x)."""
        return torch.cat([initial_noise(self.kind, (1, 1, *shape), torch.tensor([t]),
                                        self._generator(int(z))) for z in slices])

    def gaussian(self, slices: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
        """Fresh Gaussian noise for a sampling step: (n, 1, y, x)."""
        return torch.cat([torch.randn((1, 1, *shape), generator=self._generator(int(z)))
                          for z in slices])


@dataclass
class ImageDDPM:
    """The shared network, its diffusion process and the noise it was trained with."""

    network: DiffusionUNet
    diffusion: DiffusionProcess
    noise: str
    device: str = "cpu"

    def to(self, device: str) -> ImageDDPM:
        self.network.to(device)
        self.device = device
        return self

    @property
    def size_multiple(self) -> int:
        return self.network.config.size_multiple

    @torch.no_grad()
    def estimate(self, zt: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0 estimate clipped to [-1, 1], the eps consistent with it and z_t) of a batch at
        level t: a step from them is the DDPM posterior's with the clipped x0, as MONAI's
        DDPMScheduler (clip_sample) steps."""
        level = torch.full((len(zt),), t, device=zt.device)
        x0, _ = self.diffusion.x0_and_eps(self.network(zt, level), zt, level)
        x0 = x0.clamp(-1.0, 1.0)
        abar = self.diffusion.alpha_bar(level, zt)
        return x0, (zt - abar.sqrt() * x0) / (1.0 - abar).sqrt()

    def step(self, x0: torch.Tensor, eps: torch.Tensor, t: int, t_prev: int, eta: float,
             noise: SliceNoise, slices: np.ndarray) -> torch.Tensor:
        """z_{t_prev} from the estimates at level t (eq. 12 of Song et al.; no noise on the
        last step)."""
        fresh = (noise.gaussian(slices, tuple(x0.shape[2:])).to(x0.device)
                 if eta > 0 and t_prev >= 0 else None)
        return self.diffusion.ddim_step(x0, eps, t, t_prev, eta if fresh is not None else 0.0,
                                        fresh)

    def check_slices(self, shape: tuple[int, ...], method: str) -> None:
        multiple = self.size_multiple
        if shape[1] % multiple or shape[2] % multiple:
            raise ValueError(f"{method} needs axial slices whose sides are multiples of "
                             f"{multiple}, not {shape[1:]}")


@dataclass
class SliceDDPMMethod:
    """A method on the shared DDPM (THOR, AutoDDPM): it runs slice batch by slice batch
    (`restore_batch`), then the usual post-processing of its map. `settings` holds at least
    `median_size` and `erosion`."""

    ddpm: ImageDDPM
    settings: Any
    batch_size: int = 0  # slices per batch; 0: chosen for memory
    title = "a DDPM method"

    def to(self, device: str) -> SliceDDPMMethod:
        self.ddpm.to(device)
        return self

    def restore_batch(self, slices: np.ndarray, masks: np.ndarray, indices: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
        """(map, pseudo-healthy slices on [0, 1]) of a batch of slices (n, y, x) with their
        brain masks (float32) and z indices."""
        raise NotImplementedError

    def predict(self, image: np.ndarray, brain: np.ndarray, subject: Subject = UNKNOWN,
                on_step: StepCallback | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(post-processed map, pseudo-healthy image) on the grid, over the axial slices that
        hold enough brain (the map is 0 on the others); `on_step(done, total)` hears of every
        slice batch and may raise to stop. These methods have no covariates: `subject` is
        not used."""
        self.ddpm.check_slices(image.shape, self.title)
        healthy = (image * brain).astype(np.float32)

        def process(slices: np.ndarray, masks: np.ndarray, batch: np.ndarray) -> np.ndarray:
            anomaly, healthy[batch] = self.restore_batch(slices, masks.astype(np.float32),
                                                         batch)
            return anomaly

        batch_size = self.batch_size or slice_batch_size(image.shape[1:])
        anomaly = map_slices(image, brain, process, batch_size, on_step)
        return filtered_in_eroded_brain(anomaly, brain, self.settings.median_size,
                                        self.settings.erosion), healthy


def load_image_ddpm(folder: str | Path) -> tuple[ImageDDPM, dict]:
    """The shared DDPM of a THOR/AutoDDPM bundle (network/: weights, the config it was built
    with, its diffusion process and noise) and the bundle's inference settings per method."""
    folder = Path(folder)
    bundle = json.loads((folder / "manifest.json").read_text())
    manifest = json.loads((folder / NETWORK_FOLDER / "manifest.json").read_text())
    network = DiffusionUNet(DiffusionUNetConfig.from_dict(manifest["config"]))
    network.load_state_dict(load_weights(folder / NETWORK_FOLDER, WEIGHTS_STEM))
    model = ImageDDPM(network.eval(), DiffusionProcess(DiffusionConfig(**manifest["diffusion"])),
                      manifest["noise"])
    return model, bundle.get("inference", {})

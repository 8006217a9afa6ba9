"""The first-stage KL autoencoder (MONAI AutoencoderKL) shared by the latent diffusion methods.

Named configurations: `default` is sized to train on a 2-core CPU within about two hours on
64^3 patches of the 2 mm grid, with 4x downsampling (96 x 112 x 96 -> 3 x 24 x 28 x 24, latent
voxels of 8 mm): 8x downsampling, tried first, left 16 mm latent voxels that could not hold the
2 mm anatomy (healthy validation MAE inside the brain 0.089, PSNR 18). `latent16` keeps the
default's network with 16 latent channels (a more faithful first stage). `paper` follows the
configuration of the CADD authors' related code (channels 64, 128, 128, 128, two residual
blocks per level, 8x) for a GPU and 1 mm or 1.5 mm grids.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ModelError

if TYPE_CHECKING:
    import torch

# Whole volumes are coded in windows of the training patch size, blended with Gaussian weights:
# GroupNorm statistics of a whole 2 mm volume (three quarters background) differ from those of
# the brain-centred training patches, and coding it in one piece biased the reconstruction by
# +0.07 inside the brain (MAE 0.088 against 0.045 on patches; windows: 0.06). The windows still
# hold more background than brain-centred patches (a bias of +0.02 to +0.04), so new first
# stages train on the windows themselves (`coding_windows`).
WINDOW = 64
WINDOW_OVERLAP = 0.5


@dataclass(frozen=True)
class AutoencoderConfig:
    channels: tuple[int, ...] = (16, 32, 64)
    num_res_blocks: int = 1
    latent_channels: int = 3
    norm_num_groups: int = 8
    attention_at_deepest_level: bool = False
    spatial_dims: int = 3  # 2 for the slice methods (MAD-AD)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, config: dict) -> AutoencoderConfig:
        """The inverse of `to_dict` (the config a manifest records)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})


AUTOENCODER_CONFIGS = {
    "default": AutoencoderConfig(),
    "paper": AutoencoderConfig(channels=(64, 128, 128, 128), num_res_blocks=2,
                               norm_num_groups=32, attention_at_deepest_level=True),
    "tiny": AutoencoderConfig(channels=(8, 8, 8, 8), num_res_blocks=1, norm_num_groups=4),
    # The default's network with 16 latent channels instead of 3 (4 values for every 16
    # voxels, where the default keeps 3 for 64): the first stage's error is mostly what its
    # 3 channels cannot hold (README, CADD > The first stage), and the latent models' cost
    # hardly depends on the channels.
    "latent16": AutoencoderConfig(latent_channels=16),
    # One halving instead of two (96 x 112 x 96 -> 4 x 48 x 56 x 48, latent voxels of 4 mm):
    # the 4x first stages stay above 2x average pooling's error inside the brain, so a latent
    # grid as fine as 2x pooling's, with 4 values for every 8 voxels, is what can hold the 2 mm
    # anatomy (README, CADD > The first stage).
    "half": AutoencoderConfig(channels=(16, 32), latent_channels=4),
}


def build_autoencoder(config: AutoencoderConfig):
    """An AutoencoderKL (3D, or 2D for slices) with `len(channels) - 1` halvings (4x for three
    levels, 8x for four)."""
    from monai.networks.nets import AutoencoderKL

    levels = len(config.channels)
    attention = (False,) * (levels - 1) + (config.attention_at_deepest_level,)
    autoencoder = AutoencoderKL(
        spatial_dims=config.spatial_dims, in_channels=1, out_channels=1,
        channels=config.channels,
        num_res_blocks=(config.num_res_blocks,) * levels, attention_levels=attention,
        latent_channels=config.latent_channels, norm_num_groups=config.norm_num_groups,
        with_encoder_nonlocal_attn=config.attention_at_deepest_level,
        with_decoder_nonlocal_attn=config.attention_at_deepest_level,
    )
    autoencoder.downsampling = 2 ** (levels - 1)
    return autoencoder


def load_autoencoder(folder: str | os.PathLike) -> tuple[torch.nn.Module, dict]:
    """The trained autoencoder of a folder (manifest.json + autoencoder.safetensors) and its
    manifest, built from the architecture the manifest records (`config`), not from today's
    named configs, so that a bundle loads as it was trained."""
    from safetensors.torch import load_file

    folder = Path(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    try:
        config = AutoencoderConfig.from_dict(manifest["config"])
    except (KeyError, TypeError) as error:
        raise ModelError(f"The autoencoder manifest in {folder} does not record a usable "
                         f"architecture ('config': {error}); rebuild or re-fetch the model.") \
            from None
    autoencoder = build_autoencoder(config)
    autoencoder.load_state_dict(load_file(str(folder / "autoencoder.safetensors")))
    return autoencoder.eval(), manifest


def coding_windows(shape: tuple[int, ...], window: int = WINDOW) -> list[tuple[slice, ...]]:
    """The windows `encode_volume` codes a volume of this shape in (MONAI's sliding-window
    placement at WINDOW_OVERLAP), so that a first stage can train on exactly what it codes."""
    from monai.data.utils import dense_patch_slices

    size = [min(window, n) for n in shape]
    interval = [n if w == n else max(int(w * (1 - WINDOW_OVERLAP)), 1)
                for w, n in zip(size, shape, strict=True)]
    return [tuple(slice(int(s.start), int(s.stop)) for s in box)
            for box in dense_patch_slices(shape, size, interval)]


def encode_volume(autoencoder, x, window: int = WINDOW):
    """Latent mean (1, C, D/f, H/f, W/f) of a whole volume x (1, 1, D, H, W), window by window."""
    from monai.inferers import sliding_window_inference

    return sliding_window_inference(x, (window,) * 3, 4, lambda patch: autoencoder.encode(patch)[0],
                                    overlap=WINDOW_OVERLAP, mode="gaussian")


def decode_volume(autoencoder, z, window: int = WINDOW):
    """The image of a whole latent, decoded window by window (the inverse of encode_volume)."""
    from monai.inferers import sliding_window_inference

    latent_window = window // autoencoder.downsampling
    return sliding_window_inference(z, (latent_window,) * 3, 4, autoencoder.decode,
                                    overlap=WINDOW_OVERLAP, mode="gaussian")


def encode_image(autoencoder, image, scale: float = 1.0, device: str = "cpu"):
    """The scaled latent (1, C, d, h, w) of a grid image (z, y, x), a numpy array."""
    import torch

    x = torch.from_numpy(image[None, None].astype("float32")).to(device)
    with torch.no_grad():
        return encode_volume(autoencoder, x) * scale


def decode_image(autoencoder, latent, scale: float = 1.0):
    """The grid image (numpy, clipped to [0, 1]) of a scaled latent: encode_image's inverse."""
    import torch

    with torch.no_grad():
        decoded = decode_volume(autoencoder, latent / scale)
    return decoded[0, 0].cpu().numpy().clip(0.0, 1.0)


def build_discriminator(channels: int = 16, spatial_dims: int = 3):
    """The patch discriminator of the adversarial term (MONAI PatchDiscriminator)."""
    from monai.networks.nets import PatchDiscriminator

    return PatchDiscriminator(spatial_dims=spatial_dims, num_layers_d=3, channels=channels,
                              in_channels=1, out_channels=1)

"""The first-stage KL autoencoder (MONAI AutoencoderKL) shared by the latent diffusion methods.

Named configurations: `default` is sized to train on a 2-core CPU within about two hours on
64^3 patches of the 2 mm grid (8x downsampling: 96 x 112 x 96 -> 3 x 12 x 14 x 12); `paper`
follows the configuration of the CADD authors' related code (channels 64, 128, 128, 128, two
residual blocks per level) for a GPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class AutoencoderConfig:
    channels: tuple[int, ...] = (16, 32, 64, 64)
    num_res_blocks: int = 1
    latent_channels: int = 3
    norm_num_groups: int = 8
    attention_at_deepest_level: bool = False

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


AUTOENCODER_CONFIGS = {
    "default": AutoencoderConfig(),
    "paper": AutoencoderConfig(channels=(64, 128, 128, 128), num_res_blocks=2,
                               norm_num_groups=32, attention_at_deepest_level=True),
    "tiny": AutoencoderConfig(channels=(8, 8, 8, 8), num_res_blocks=1, norm_num_groups=4),
}


def build_autoencoder(config: AutoencoderConfig):
    """A 3D AutoencoderKL with `len(channels) - 1` halvings (8x for four levels)."""
    from monai.networks.nets import AutoencoderKL

    levels = len(config.channels)
    attention = (False,) * (levels - 1) + (config.attention_at_deepest_level,)
    return AutoencoderKL(
        spatial_dims=3, in_channels=1, out_channels=1, channels=config.channels,
        num_res_blocks=(config.num_res_blocks,) * levels, attention_levels=attention,
        latent_channels=config.latent_channels, norm_num_groups=config.norm_num_groups,
        with_encoder_nonlocal_attn=config.attention_at_deepest_level,
        with_decoder_nonlocal_attn=config.attention_at_deepest_level,
    )


def build_discriminator(channels: int = 16):
    """The patch discriminator of the adversarial term (MONAI PatchDiscriminator)."""
    from monai.networks.nets import PatchDiscriminator

    return PatchDiscriminator(spatial_dims=3, num_layers_d=3, channels=channels, in_channels=1,
                              out_channels=1)

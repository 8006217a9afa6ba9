"""MAD-AD's denoiser: a 2D diffusion UNet with attention (MONAI DiffusionModelUNet) whose final
convolution has one channel more than the latent: the latent channels are f_{theta,z0}, the
clean-latent estimate, and the extra channel is f_{theta,M}, the logit of the mask head that
says which positions were noised (MAD-AD section 3, "Mask prediction").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class MaskedUNetConfig:
    latent_channels: int = 4
    channels: tuple[int, ...] = (32, 64, 64)
    attention_levels: tuple[bool, ...] = (False, False, True)
    num_res_blocks: int = 1
    num_head_channels: int = 32
    norm_num_groups: int = 16

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> MaskedUNetConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


MASKED_UNET_CONFIGS = {
    # Sized for 2 CPU cores (28 x 24 latents of the 2 mm grid's axial slices).
    "default": MaskedUNetConfig(),
    # The authors' UNet scale for 32 x 32 latents of 256 x 256 slices, for a GPU.
    "paper": MaskedUNetConfig(channels=(128, 256, 256, 512),
                              attention_levels=(False, True, True, True), num_res_blocks=2,
                              num_head_channels=64, norm_num_groups=32),
    "tiny": MaskedUNetConfig(channels=(8, 16), attention_levels=(False, True),
                             num_head_channels=8, norm_num_groups=4),
}


class MaskedUNet(torch.nn.Module):
    """(z0 estimate, mask logit) = f_theta(z_t, t)."""

    def __init__(self, config: MaskedUNetConfig) -> None:
        super().__init__()
        from monai.networks.nets import DiffusionModelUNet

        self.config = config
        levels = len(config.channels)
        self.unet = DiffusionModelUNet(
            spatial_dims=2, in_channels=config.latent_channels,
            out_channels=config.latent_channels + 1, channels=config.channels,
            attention_levels=config.attention_levels,
            num_res_blocks=(config.num_res_blocks,) * levels,
            num_head_channels=config.num_head_channels, norm_num_groups=config.norm_num_groups)

    def forward(self, zt: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = self.unet(zt, t)
        return output[:, :-1], output[:, -1:]

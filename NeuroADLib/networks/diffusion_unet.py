"""The unconditional image-space denoiser THOR and AutoDDPM share: MONAI's 2D
DiffusionModelUNet on one-channel axial slices, predicting the noise (epsilon) at a level t,
as both papers' code configures it (channels (128, 256, 256), attention at the two deeper
levels, one residual block per level)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class DiffusionUNetConfig:
    channels: tuple[int, ...] = (16, 32, 64)
    attention_levels: tuple[bool, ...] = (False, False, False)
    num_res_blocks: int = 1
    num_head_channels: int = 32
    norm_num_groups: int = 8

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> DiffusionUNetConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    @property
    def size_multiple(self) -> int:
        """Slice sides must be multiples of this (each level below the first halves them)."""
        return 2 ** (len(self.channels) - 1)


DIFFUSION_UNET_CONFIGS = {
    # Sized for 2 CPU cores (the 112 x 96 axial slices of the 2 mm grid), like cDDPM's
    # default UNet: the full-resolution level costs most.
    "default": DiffusionUNetConfig(),
    # THOR's and AutoDDPM's code: channels (128, 256, 256), attention at the two deeper
    # levels with 256-channel heads; for a GPU.
    "paper": DiffusionUNetConfig(channels=(128, 256, 256),
                                 attention_levels=(False, True, True), num_head_channels=256,
                                 norm_num_groups=32),
    "tiny": DiffusionUNetConfig(channels=(8, 8), attention_levels=(False, False),
                                num_head_channels=8, norm_num_groups=4),
}


class DiffusionUNet(torch.nn.Module):
    """eps estimate = f_theta(x_t, t) on (n, 1, y, x) slices."""

    def __init__(self, config: DiffusionUNetConfig) -> None:
        super().__init__()
        from monai.networks.nets import DiffusionModelUNet

        self.config = config
        levels = len(config.channels)
        self.unet = DiffusionModelUNet(
            spatial_dims=2, in_channels=1, out_channels=1, channels=config.channels,
            attention_levels=config.attention_levels,
            num_res_blocks=(config.num_res_blocks,) * levels,
            num_head_channels=config.num_head_channels, norm_num_groups=config.norm_num_groups)

    def forward(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(xt, t)

"""Diffusion UNets conditioned on an encoding of the clean image: a ResNet image encoder that
turns the slice into a code c in R^d, and a 2D denoising UNet whose residual blocks are scaled
and shifted by c and the time step. Two ways to condition (`ConditionedUNetConfig.conditioning`):

cDDPM's FiLM (Behrendt et al. 2023, section 3.2 and Fig. 1), "film":
    c_t   = MLP_I(sinusoidal(t))                       the time step as a vector in R^d
    c'    = [c, c_t]                                   in R^2d
    gamma, beta = split(MLP_II_i(c'))                  one projection per residual block
    f'_i  = f_i * (gamma + 1) + beta                   FiLM on the block's normalised features

SDM's AdaGN (the longitudinal report, eq. 3.1, after Diff-AE), "adagn":
    (t_s, t_b) = Linear(c_t),  (y_s, y_b) = Linear(y_sem)      per residual block
    AdaGN(h) = y_s (t_s GroupNorm(h) + t_b) + y_b              scales written as 1 + s

TDM's sum (the longitudinal report, section 6.2, after TADM), "sum":
    h := h + psi(c')                                           c' = [c, c_t], broadcast

The encoder is MONAI's 2D ResNet with a fully connected head of d outputs. MONAI's diffusion
UNet adds its time embedding to the features and has no scale-and-shift conditioning, so the
UNet is written here, in the style of Dhariwal and Nichol's (GroupNorm, SiLU, FiLM after the
second normalisation, self-attention at the deepest level when asked).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ConditionedUNetConfig:
    channels: tuple[int, ...] = (16, 32, 64)  # per UNet level; each level halves the size
    num_res_blocks: int = 1
    attention_at_deepest_level: bool = False
    condition_dim: int = 64  # d, the size of c and of c_t
    encoder_channels: tuple[int, int, int, int] = (16, 32, 64, 128)  # ResNet stages
    encoder_blocks: tuple[int, int, int, int] = (1, 1, 1, 1)  # residual blocks per stage
    norm_num_groups: int = 8
    conditioning: str = "film"  # "film" (cDDPM), "adagn" (SDM) or "sum" (TDM)
    in_channels: int = 1  # the UNet's input images (TDM: the noisy residual and the baseline)
    out_channels: int = 1  # what it predicts (the conditioned LDM: eps and the variance, 2 C)
    spatial_dims: int = 2  # 2 for slices, 3 for latent volumes (the conditioned LDM)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> ConditionedUNetConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def conv(self, in_channels: int, out_channels: int, kernel: int, **arguments) -> nn.Module:
        """A convolution of this network's dimension."""
        return convolution(self.spatial_dims)(in_channels, out_channels, kernel, **arguments)

    @property
    def size_multiple(self) -> int:
        """Slice sides must be multiples of this (each level below the first halves them)."""
        return 2 ** (len(self.channels) - 1)


def convolution(spatial_dims: int) -> type[nn.Module]:
    return nn.Conv2d if spatial_dims == 2 else nn.Conv3d


CONDITIONED_UNET_CONFIGS = {
    # Sized for 2 CPU cores (the 112 x 96 axial slices of the 2 mm grid): 0.5 M parameters,
    # about 1.2 s per training batch of 16 on one busy core (the full-resolution level costs
    # most; (32, 64, 64) took 3.4 s).
    "default": ConditionedUNetConfig(),
    # The paper's: channels [128, 256, 256], d = 128, a ResNet-18-sized encoder; for a GPU.
    "paper": ConditionedUNetConfig(channels=(128, 256, 256), num_res_blocks=2,
                                   attention_at_deepest_level=True, condition_dim=128,
                                   encoder_channels=(64, 128, 256, 512),
                                   encoder_blocks=(2, 2, 2, 2), norm_num_groups=32),
    "tiny": ConditionedUNetConfig(channels=(8, 8), condition_dim=8,
                                  encoder_channels=(4, 4, 4, 4), norm_num_groups=4),
}


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """The transformer position embedding of the time steps t (batch,) as (batch, dim)."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * frequencies[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class ResBlockLayers(nn.Module):
    """The layers every conditioned residual block shares: GroupNorm, SiLU, conv; GroupNorm,
    SiLU, conv; plus the input (through a 1x1 conv when the width changes). Subclasses add
    how the condition enters."""

    def __init__(self, in_channels: int, out_channels: int, groups: int,
                 spatial_dims: int = 2) -> None:
        super().__init__()
        conv = convolution(spatial_dims)
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = conv(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.conv2 = conv(out_channels, out_channels, 3, padding=1)
        self.skip = (nn.Identity() if in_channels == out_channels
                     else conv(in_channels, out_channels, 1))


def per_channel(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(batch, channels) values shaped to broadcast over the pixels or voxels of `like`."""
    return values.reshape(*values.shape, *([1] * (like.dim() - 2)))


class FiLMResBlock(ResBlockLayers):
    """GroupNorm, SiLU, conv; GroupNorm, FiLM(gamma, beta from c'), SiLU, conv; plus the
    input."""

    def __init__(self, in_channels: int, out_channels: int, condition_dim: int,
                 groups: int, spatial_dims: int = 2) -> None:
        super().__init__(in_channels, out_channels, groups, spatial_dims)
        self.film = nn.Sequential(nn.SiLU(), nn.Linear(condition_dim, 2 * out_channels))  # MLP II

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        gamma, beta = per_channel(self.film(condition), h).chunk(2, dim=1)
        h = self.norm2(h) * (gamma + 1) + beta
        return self.skip(x) + self.conv2(nn.functional.silu(h))


class AdaGNResBlock(FiLMResBlock):
    """FiLMResBlock with SDM's AdaGN (eq. 3.1) in place of FiLM: the time step scales and
    shifts the normalised features, then the semantic code scales and shifts the result.
    `condition` is c' = [y_sem, c_t], split in halves."""

    def __init__(self, in_channels: int, out_channels: int, condition_dim: int,
                 groups: int, spatial_dims: int = 2) -> None:
        super().__init__(in_channels, out_channels, condition_dim // 2, groups, spatial_dims)
        self.time_projection = nn.Sequential(nn.SiLU(),
                                             nn.Linear(condition_dim // 2, 2 * out_channels))

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        code, time = condition.chunk(2, dim=1)
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        t_s, t_b = per_channel(self.time_projection(time), h).chunk(2, dim=1)
        y_s, y_b = per_channel(self.film(code), h).chunk(2, dim=1)
        h = (y_s + 1) * (self.norm2(h) * (t_s + 1) + t_b) + y_b
        return self.skip(x) + self.conv2(nn.functional.silu(h))


class SumResBlock(ResBlockLayers):
    """TDM's residual block (the longitudinal report, section 6.2, after Ho et al.): the
    conditions are projected to the block's width and added to its features,
    h := h + psi(c'), broadcast over the pixels."""

    def __init__(self, in_channels: int, out_channels: int, condition_dim: int,
                 groups: int, spatial_dims: int = 2) -> None:
        super().__init__(in_channels, out_channels, groups, spatial_dims)
        self.projection = nn.Sequential(nn.SiLU(), nn.Linear(condition_dim, out_channels))

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = h + per_channel(self.projection(condition), h)
        return self.skip(x) + self.conv2(nn.functional.silu(self.norm2(h)))


CONDITIONED_BLOCKS = {"film": FiLMResBlock, "adagn": AdaGNResBlock, "sum": SumResBlock}


class SelfAttention(nn.Module):
    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.attention = nn.MultiheadAttention(channels, num_heads=max(1, channels // 64),
                                               batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.norm(x).flatten(2).transpose(1, 2)
        attended, _ = self.attention(tokens, tokens, tokens, need_weights=False)
        return x + attended.transpose(1, 2).reshape(x.shape)


def build_encoder(config: ConditionedUNetConfig, in_channels: int = 1) -> nn.Module:
    """F_enc: MONAI's ResNet of basic blocks (2D or 3D, as the UNet) with a linear head to
    R^d, reading `in_channels` channels."""
    from monai.networks.nets import ResNet

    return ResNet("basic", list(config.encoder_blocks), list(config.encoder_channels),
                  spatial_dims=config.spatial_dims, n_input_channels=in_channels,
                  num_classes=config.condition_dim)


class ConditionedUNet(nn.Module):
    """f_theta(x_t, t, c): a UNet of conditioned residual blocks (its output is what the
    diffusion process's prediction type says: x0 for cDDPM, eps for SDM)."""

    def __init__(self, config: ConditionedUNetConfig) -> None:
        super().__init__()
        if config.conditioning not in CONDITIONED_BLOCKS:
            raise ValueError(f"Unknown conditioning {config.conditioning!r}; known: "
                             f"{', '.join(CONDITIONED_BLOCKS)}.")
        self.config = config
        d, groups, channels = config.condition_dim, config.norm_num_groups, config.channels
        block = CONDITIONED_BLOCKS[config.conditioning]
        self.time_mlp = nn.Sequential(nn.Linear(channels[0], d), nn.SiLU(),
                                      nn.Linear(d, d))  # MLP I
        self.conv_in = config.conv(config.in_channels, channels[0], 3, padding=1)
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        width = channels[0]
        for level, out in enumerate(channels):
            blocks = []
            for _ in range(config.num_res_blocks):
                blocks.append(block(width, out, 2 * d, groups, config.spatial_dims))
                width = out
            self.down.append(nn.ModuleList(blocks))
            self.downsample.append(config.conv(width, width, 3, stride=2, padding=1)
                                   if level + 1 < len(channels) else nn.Identity())
        self.middle = nn.ModuleList([block(width, width, 2 * d, groups, config.spatial_dims)
                                     for _ in range(2)])
        self.attention = (SelfAttention(width, groups) if config.attention_at_deepest_level
                          else nn.Identity())
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(len(channels))):
            out = channels[level]
            blocks = [block(width + out, out, 2 * d, groups, config.spatial_dims)]
            blocks += [block(out, out, 2 * d, groups, config.spatial_dims)
                       for _ in range(config.num_res_blocks - 1)]
            self.up.append(nn.ModuleList(blocks))
            width = out
            self.upsample.append(nn.Upsample(scale_factor=2, mode="nearest") if level > 0
                                 else nn.Identity())
        self.out = nn.Sequential(nn.GroupNorm(groups, width), nn.SiLU(),
                                 config.conv(width, config.out_channels, 3, padding=1))

    def forward(self, xt: torch.Tensor, t: torch.Tensor, context: torch.Tensor
                ) -> torch.Tensor:
        condition = torch.cat([context, self.time_mlp(
            sinusoidal_embedding(t, self.config.channels[0]))], dim=1)  # c' = [c, c_t]
        h = self.conv_in(xt)
        skips = []
        for blocks, downsample in zip(self.down, self.downsample, strict=True):
            for block in blocks:
                h = block(h, condition)
            skips.append(h)
            h = downsample(h)
        h = self.middle[0](h, condition)
        h = self.middle[1](self.attention(h), condition)
        for blocks, upsample in zip(self.up, self.upsample, strict=True):
            h = torch.cat([h, skips.pop()], dim=1)
            for block in blocks:
                h = block(h, condition)
            h = upsample(h)
        return self.out(h)


class EncoderConditionedNetwork(nn.Module):
    """The encoder and the UNet, trained end to end (cDDPM section 3.2, SDM eq. 3.2, the
    pathology-conditioned LDM eq. 7): f(x_t, t, x0) = UNet(x_t, t, Enc(x0)); the encoder reads
    what the UNet reads (an image, or a latent of `in_channels` channels)."""

    def __init__(self, config: ConditionedUNetConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = build_encoder(config, config.in_channels)
        self.unet = ConditionedUNet(config)

    def forward(self, xt: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return self.unet(xt, t, self.encoder(x0))


class TemporalNetwork(nn.Module):
    """TDM's eps_theta(dx_t, t; x_a, l_a, dl) (the longitudinal report, eq. 6.1 and section
    6.2): a UNet of summing residual blocks whose condition is the semantic code of the
    baseline image plus linear projections of the baseline age and of the time gap,
    c = Enc(x_a) + psi_2(l_a) + psi_3(dl). The report also adds RRDB feature maps of x_a to the
    hidden states; here the baseline image itself is the UNet's second input channel, which
    gives the UNet the same spatial view of it. Ages enter in centuries, gaps in decades."""

    AGE_SCALE, GAP_SCALE = 100.0, 10.0  # years

    def __init__(self, config: ConditionedUNetConfig) -> None:
        super().__init__()
        if config.in_channels != 2:
            raise ValueError("TDM's UNet reads two images (the residual and the baseline), not "
                             f"{config.in_channels}.")
        self.config = config
        self.encoder = build_encoder(config)
        self.age = nn.Linear(1, config.condition_dim)  # psi_2
        self.gap = nn.Linear(1, config.condition_dim)  # psi_3
        self.unet = ConditionedUNet(config)

    def forward(self, residual_t: torch.Tensor, t: torch.Tensor, baseline: torch.Tensor,
                age: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
        context = (self.encoder(baseline) + self.age(age[:, None] / self.AGE_SCALE)
                   + self.gap(gap[:, None] / self.GAP_SCALE))
        return self.unet(torch.cat([residual_t, baseline], dim=1), t, context)


def resnet_features(encoder: nn.Module, x: torch.Tensor, stages: tuple[int, ...]
                    ) -> list[torch.Tensor]:
    """The feature maps of MONAI ResNet `encoder` at the ends of its residual stages `stages`
    (1-4), as FAM compares them (the longitudinal report, eq. 3.4)."""
    h = encoder.act(encoder.bn1(encoder.conv1(x)))
    if not encoder.no_max_pool:
        h = encoder.maxpool(h)
    features = []
    for stage in range(1, max(stages) + 1):
        h = getattr(encoder, f"layer{stage}")(h)
        if stage in stages:
            features.append(h)
    return features

"""The Latte-style conditional transformer on a 3D latent (CADD section 3.2; MONAI has none).

Tokens: the latent (C x D x H x W) cut into p^3 patches by a strided convolution, plus a fixed
3D sine-cosine position code. Blocks alternate between attention *within* a depth slice (the
tokens of one d, as Latte attends within a video frame) and attention *across* depth slices
(the tokens of one (h, w) position, as Latte attends across frames). Every block is modulated
by S-AdaLN (adaLN-Zero: shift, scale and a zero-initialised gate for the attention and the MLP
branch) from c = t_emb + f_psi(age, sex), with t_emb a sinusoidal embedding passed through a
two-layer SiLU MLP and f_psi a single linear layer. The output holds 2C channels: epsilon and
the learned-range variance v (see diffusion.gaussian).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

AGE_SCALE = 100.0  # ages enter f_psi as years / 100


@dataclass(frozen=True)
class LatteConfig:
    latent_channels: int = 3
    latent_shape: tuple[int, int, int] = (24, 28, 24)
    patch: int = 4  # 4^3 latent voxels per token: 252 tokens, 0.37 s per CPU step of 8
    hidden: int = 192
    depth: int = 8
    heads: int = 4
    mlp_ratio: float = 4.0
    use_covariates: bool = True

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def for_latent(self, channels: int, shape: tuple[int, int, int]) -> LatteConfig:
        """This configuration on a first stage's latent of `channels` x `shape`, refused where
        its patches do not tile the latent or a token holds more latent values than the
        hidden width: every token passes through `hidden` numbers, so the noise of
        channels * patch^3 values cannot be predicted better than an MSE of 1 - hidden /
        values (measured: the default transformer, 192 wide, on the `half` first stage's
        tokens of 4 x 8^3 = 2048 values stalled at 0.915 against the floor 0.906)."""
        values = channels * self.patch ** 3
        if any(size % self.patch for size in shape):
            raise ValueError(f"a latent of shape {tuple(shape)} is not tiled by "
                             f"{self.patch}^3 patches")
        if values > self.hidden:
            raise ValueError(
                f"a token of {channels} x {self.patch}^3 = {values} latent values does not "
                f"fit through this transformer's {self.hidden} hidden numbers (its noise "
                f"prediction could not beat MSE {1 - self.hidden / values:.3f}): use a first "
                "stage with fewer latent values per token or a wider transformer")
        return replace(self, latent_channels=channels, latent_shape=tuple(shape))


TRANSFORMER_WEIGHTS = "transformer"  # transformer.safetensors, or its shards

LATTE_CONFIGS = {
    "default": LatteConfig(),
    "paper": LatteConfig(hidden=1024, depth=28, heads=16),
    "tiny": LatteConfig(latent_shape=(4, 4, 4), patch=2, hidden=32, depth=2, heads=2),
}


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (batch,) timesteps, as in DDPM/DiT."""
    half = dim // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32)
                            / half).to(t.device)
    angles = t.float()[:, None] * frequencies[None]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    return nn.functional.pad(embedding, (0, dim % 2))


def sincos_position_3d(grid: tuple[int, int, int], dim: int) -> torch.Tensor:
    """Fixed (D*H*W, dim) position code: a third of the channels per axis (sin and cos)."""
    per_axis = (dim // 6) * 2
    codes = []
    for axis, size in enumerate(grid):
        position = torch.arange(size, dtype=torch.float32)
        omega = 1.0 / 10000 ** (torch.arange(per_axis // 2, dtype=torch.float32) / (per_axis // 2))
        angles = position[:, None] * omega[None]
        code = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
        shape = [1, 1, 1, per_axis]
        shape[axis] = size
        codes.append(code.reshape(shape).expand(*grid, per_axis))
    stacked = torch.cat(codes, dim=-1).reshape(-1, 3 * per_axis)
    return nn.functional.pad(stacked, (0, dim - 3 * per_axis))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class LatteBlock(nn.Module):
    """A transformer block with S-AdaLN; `within_slice` picks the attention grouping."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float, within_slice: bool) -> None:
        super().__init__()
        self.within_slice = within_slice
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attention = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        inner = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden, inner), nn.GELU(approximate="tanh"),
                                 nn.Linear(inner, hidden))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))
        nn.init.zeros_(self.modulation[-1].weight)  # adaLN-Zero: every block starts as identity
        nn.init.zeros_(self.modulation[-1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor, grid: tuple[int, int, int]
                ) -> torch.Tensor:
        """x: (B, D*H*W, hidden) tokens in (d, h, w) order; c: (B, hidden)."""
        batch, _, hidden = x.shape
        d, h, w = grid
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c).chunk(6, dim=1)
        y = modulate(self.norm1(x), shift1, scale1)
        if self.within_slice:  # sequences: the h*w tokens of one depth slice
            groups = y.reshape(batch * d, h * w, hidden)
        else:  # sequences: the d tokens at one (h, w) position
            groups = y.reshape(batch, d, h * w, hidden).transpose(1, 2).reshape(
                batch * h * w, d, hidden)
        attended, _ = self.attention(groups, groups, groups, need_weights=False)
        if self.within_slice:
            attended = attended.reshape(batch, d * h * w, hidden)
        else:
            attended = attended.reshape(batch, h * w, d, hidden).transpose(1, 2).reshape(
                batch, d * h * w, hidden)
        x = x + gate1[:, None] * attended
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class LatteTransformer(nn.Module):
    """epsilon and variance prediction for a 3D latent, conditioned on t, age and sex."""

    def __init__(self, config: LatteConfig) -> None:
        super().__init__()
        self.config = config
        p, hidden = config.patch, config.hidden
        self.grid = tuple(s // p for s in config.latent_shape)
        self.embed = nn.Conv3d(config.latent_channels, hidden, kernel_size=p, stride=p)
        self.register_buffer("position", sincos_position_3d(self.grid, hidden)[None],
                             persistent=False)
        self.time_mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(),
                                      nn.Linear(hidden, hidden))
        self.covariates = nn.Linear(2, hidden)  # f_psi(age / 100, sex as -1 / +1)
        self.blocks = nn.ModuleList(
            LatteBlock(hidden, config.heads, config.mlp_ratio, within_slice=(k % 2 == 0))
            for k in range(config.depth))
        self.final_norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.output = nn.Linear(hidden, p**3 * 2 * config.latent_channels)
        for layer in (self.final_modulation[-1], self.output):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def condition(self, t: torch.Tensor, age: torch.Tensor | None, sex: torch.Tensor | None,
                  keep: torch.Tensor | None = None) -> torch.Tensor:
        """c = t_emb + f_psi(age, sex), sex +1 (F) / -1 (M). Without age and sex (or where
        `keep` is 0: covariate dropout in training) the covariate term is left out, so one
        model also serves the "without covariates" ablation."""
        c = self.time_mlp(timestep_embedding(t, self.config.hidden))
        if self.config.use_covariates and age is not None and sex is not None:
            covariates = self.covariates(torch.stack([age.float() / AGE_SCALE, sex.float()], 1))
            c = c + (covariates if keep is None else keep.float()[:, None] * covariates)
        return c

    def forward(self, z: torch.Tensor, t: torch.Tensor, age: torch.Tensor | None = None,
                sex: torch.Tensor | None = None, keep: torch.Tensor | None = None
                ) -> torch.Tensor:
        batch = z.shape[0]
        p, channels = self.config.patch, self.config.latent_channels
        x = self.embed(z).flatten(2).transpose(1, 2) + self.position
        c = self.condition(t, age, sex, keep)
        for block in self.blocks:
            x = block(x, c, self.grid)
        shift, scale = self.final_modulation(c).chunk(2, dim=1)
        x = self.output(modulate(self.final_norm(x), shift, scale))
        d, h, w = self.grid
        x = x.reshape(batch, d, h, w, p, p, p, 2 * channels)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(batch, 2 * channels, d * p, h * p, w * p)

"""Masked image modelling pre-training of a ResNet encoder, after SparK (Tian et al., ICLR
2023), as cDDPM optionally pre-trains its F_enc (Behrendt et al. 2023, section 3.3, on the
same healthy training set, mask-out ratio 65% in section 4.4; the decoder is then discarded and
F_enc fine-tuned with the denoising UNet).

    patches of side P, the encoder's total downsampling (16 for MONAI's ResNet with max-pool);
    M ~ a random mask hiding round(ratio x patches) of them
    features = Enc_sparse(x * M)        every convolution, pooling and batch norm sees only the
                                        visible patches (SparK's masked image as a sparse point
                                        set, emulated densely: outputs zeroed at masked
                                        positions, batch-norm statistics over visible positions
                                        only)
    dense_i  = features_i where visible, the learned mask token m_i where masked (densifying)
    x_hat    = Dec(dense_1..4)          a light hierarchical decoder, deepest scale upwards,
                                        each scale added on the way
    loss     = mean over the masked patches of |x_hat - norm(x)|^2, norm(x) each patch of x
               standardised by its own mean and variance (as SparK, after MAE)

After pre-training the encoder's weights are plain ResNet weights (the sparse wrappers are
removed), loaded into cDDPM's encoder before its diffusion training starts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..networks.conditioned_unet import resnet_features
from .loop import LoopSettings, run_training

STAGES = (1, 2, 3, 4)
MODULE_NAME = "spark"


@dataclass(frozen=True)
class MaskedPretraining:
    """SparK's knobs, cDDPM's mask ratio. `steps` 0: no pre-training (the paper's main
    configuration trains F_enc from scratch, end to end)."""

    steps: int = 0
    mask_ratio: float = 0.65  # cDDPM; SparK's own default is 0.6
    batch_size: int = 16
    learning_rate: float = 2e-4  # Adam
    decoder_width: int = 32  # channels of the light decoder


class ActiveMask:
    """The visible patches of the current batch, (n, 1, h, w) bool on the patch grid, which
    every sparse layer reads at its own resolution (set before each forward pass)."""

    def __init__(self) -> None:
        self.patches: torch.Tensor | None = None

    def at(self, like: torch.Tensor) -> torch.Tensor:
        """The mask at the spatial size of `like`, (n, 1, H, W) bool."""
        if self.patches is None:
            raise RuntimeError("no active mask was set for this forward pass")
        return F.interpolate(self.patches.float(), size=like.shape[-2:], mode="nearest") > 0


class SparseLayer(nn.Module):
    """A convolution or pooling that only produces output at visible positions."""

    def __init__(self, layer: nn.Module, active: ActiveMask) -> None:
        super().__init__()
        self.layer, self.active = layer, active

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layer(x)
        return y * self.active.at(y)


class SparseBatchNorm(nn.Module):
    """Batch normalisation whose statistics come from the visible positions only (SparK's
    sparse batch norm); masked positions stay zero."""

    def __init__(self, norm: nn.BatchNorm2d, active: ActiveMask) -> None:
        super().__init__()
        if norm.momentum is None:
            raise ValueError("sparse batch norm needs a running-average momentum")
        self.layer, self.active = norm, active

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.layer
        visible = self.active.at(x)[:, 0]
        channels_last = x.permute(0, 2, 3, 1)
        normalised = F.batch_norm(channels_last[visible], norm.running_mean, norm.running_var,
                                  norm.weight, norm.bias, norm.training, norm.momentum,
                                  norm.eps)
        out = torch.zeros_like(channels_last)
        out[visible] = normalised
        return out.permute(0, 3, 1, 2)


def sparsify(module: nn.Module, active: ActiveMask) -> nn.Module:
    """Wrap every convolution, max-pool and batch norm below `module` (in place)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, SparseBatchNorm(child, active))
        elif isinstance(child, nn.Conv2d | nn.MaxPool2d):
            setattr(module, name, SparseLayer(child, active))
        else:
            sparsify(child, active)
    return module


def densify(module: nn.Module) -> nn.Module:
    """Undo `sparsify` (in place): the plain layers back in their places."""
    for name, child in module.named_children():
        if isinstance(child, SparseLayer | SparseBatchNorm):
            setattr(module, name, child.layer)
        else:
            densify(child)
    return module


class LightDecoder(nn.Module):
    """SparK's hierarchical decoder: each scale projected to a common width, the deepest
    upsampled and added to the next, a 3x3 block after each addition, up to the image."""

    def __init__(self, feature_channels: list[int], width: int, upsample_last: int) -> None:
        super().__init__()
        self.projections = nn.ModuleList(nn.Conv2d(c, width, 1) for c in feature_channels)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width),
                          nn.ReLU()) for _ in feature_channels)
        self.upsample_last = upsample_last
        self.head = nn.Conv2d(width, 1, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = None
        for feature, projection, block in zip(reversed(features), reversed(self.projections),
                                              reversed(self.blocks), strict=True):
            y = projection(feature)
            x = y if x is None else F.interpolate(x, size=y.shape[-2:], mode="nearest") + y
            x = block(x)
        return self.head(F.interpolate(x, scale_factor=self.upsample_last, mode="nearest"))


class SparKModel(nn.Module):
    """A ResNet encoder made sparse, the mask tokens of its scales, and the light decoder."""

    def __init__(self, encoder: nn.Module, image_size: tuple[int, int],
                 settings: MaskedPretraining) -> None:
        super().__init__()
        with torch.no_grad():
            features = resnet_features(encoder, torch.zeros(1, 1, *image_size), STAGES)
        self.patch = image_size[0] // features[-1].shape[-2]
        if any(side % self.patch for side in image_size):
            raise ValueError(f"slices of {image_size} do not divide into the encoder's "
                             f"{self.patch}-pixel patches")
        self.active = ActiveMask()
        self.encoder = sparsify(encoder, self.active)
        channels = [f.shape[1] for f in features]
        self.mask_tokens = nn.ParameterList(nn.Parameter(torch.zeros(1, c, 1, 1))
                                            for c in channels)
        self.decoder = LightDecoder(channels, settings.decoder_width,
                                    image_size[0] // features[0].shape[-2])

    def forward(self, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """The reconstruction of images x (n, 1, H, W) from their `visible` patches
        (n, 1, H / P, W / P) bool."""
        self.active.patches = visible
        features = resnet_features(self.encoder, x * self.active.at(x), STAGES)
        dense = [torch.where(self.active.at(f), f, token.expand_as(f))
                 for f, token in zip(features, self.mask_tokens, strict=True)]
        return self.decoder(dense)


def random_visible_patches(count: int, grid: tuple[int, int], ratio: float,
                           generator: torch.Generator) -> torch.Tensor:
    """(count, 1, *grid) bool: exactly round(ratio x patches) patches hidden per sample."""
    patches = grid[0] * grid[1]
    hidden = int(round(ratio * patches))
    order = torch.rand(count, patches, generator=generator).argsort(dim=1)
    visible = order >= hidden
    return visible.reshape(count, 1, *grid)


def patch_normalised(x: torch.Tensor, patch: int, eps: float = 1e-6) -> torch.Tensor:
    """Each P x P patch of x standardised by its own mean and (biased) variance."""
    n, c, h, w = x.shape
    tiles = x.reshape(n, c, h // patch, patch, w // patch, patch)
    mean = tiles.mean(dim=(3, 5), keepdim=True)
    var = tiles.var(dim=(3, 5), keepdim=True, unbiased=False)
    return ((tiles - mean) / (var + eps).sqrt()).reshape(n, c, h, w)


def masked_patch_loss(reconstruction: torch.Tensor, x: torch.Tensor, visible: torch.Tensor,
                      patch: int) -> torch.Tensor:
    """Mean squared error against the patch-normalised image over the hidden patches only."""
    hidden = ~F.interpolate(visible.float(), scale_factor=patch, mode="nearest").bool()
    error = (reconstruction - patch_normalised(x, patch)) ** 2
    return error[hidden].mean()


BatchDraw = Callable[[int, np.random.Generator], torch.Tensor]


def pretrain_encoder(encoder: nn.Module, draw_batch: BatchDraw, image_size: tuple[int, int],
                     folder: Path, settings: MaskedPretraining, seed: int,
                     checkpoint_every: int, log_every: int, device: str = "cpu",
                     log=print) -> dict[str, torch.Tensor]:
    """Pre-train (or resume, in `folder`/checkpoint) `encoder` by sparse masked modelling on
    batches from `draw_batch(size, rng)` ((n, 1, H, W) on [-1, 1]); returns the encoder's
    plain state dict. `encoder` is left as it was built (its layers unwrapped)."""
    model = SparKModel(encoder, image_size, settings).to(device)
    grid = (image_size[0] // model.patch, image_size[1] // model.patch)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)

    def step(number: int, rng: np.random.Generator, generator: torch.Generator) -> dict:
        x = draw_batch(settings.batch_size, rng).to(device)
        visible = random_visible_patches(len(x), grid, settings.mask_ratio, generator)
        visible = visible.to(device)
        value = masked_patch_loss(model(x, visible), x, visible, model.patch)
        optimiser.zero_grad(set_to_none=True)
        value.backward()
        optimiser.step()
        return {"masked_mse": value.item()}

    try:
        run_training(folder, {MODULE_NAME: model}, {"adam": optimiser}, step,
                     LoopSettings(settings.steps, seed, checkpoint_every, log_every), log)
    finally:
        densify(encoder)
    return {key: value.detach().clone() for key, value in encoder.state_dict().items()}

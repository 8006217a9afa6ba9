"""Noise for the forward process: Gaussian, or simplex (AnoDDPM, Wyatt et al. 2022; cDDPM).

Gaussian noise is white: a denoiser trained on it restores fine detail but leaves a large
lesion, whose low frequencies survive the noise, in place. Simplex noise is a sum of smooth
octaves, so that noising destroys structure at the scale of lesions too. It is written here
once, in torch (batched, on any device), because the field's libraries lack it: 3D simplex
noise (Perlin 2001, as described by Gustavson 2005: skewed simplex grid, 12 edge gradients,
kernel (0.6 - r^2)^4, scale 32), evaluated on each slice's pixel grid with the diffusion step as
the third coordinate, summed over octaves as AnoDDPM's `rand_3d_fixed_T_octaves`: coordinates
divided by `frequency`, which halves at every octave, and amplitudes multiplied by
`persistence`. Each sample and channel draws its own permutation table from the generator, so
that the same seed gives the same noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

F3, G3 = 1.0 / 3.0, 1.0 / 6.0  # skew and unskew factors of the 3D simplex grid
GRADIENTS = torch.tensor([[1, 1, 0], [-1, 1, 0], [1, -1, 0], [-1, -1, 0],
                          [1, 0, 1], [-1, 0, 1], [1, 0, -1], [-1, 0, -1],
                          [0, 1, 1], [0, -1, 1], [0, 1, -1], [0, -1, -1]], dtype=torch.float32)


def simplex3(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor,
             permutation: torch.Tensor) -> torch.Tensor:
    """3D simplex noise at the points (x, y, z) (tensors of one shape), in about [-1, 1].
    `permutation`: 256 integers, a permutation of 0..255 (it chooses the gradients)."""
    perm = torch.cat([permutation, permutation]).long().to(x.device)
    skew = (x + y + z) * F3
    i, j, k = torch.floor(x + skew), torch.floor(y + skew), torch.floor(z + skew)
    unskew = (i + j + k) * G3
    x0, y0, z0 = x - (i - unskew), y - (j - unskew), z - (k - unskew)
    # which of the six simplices of the skewed cube the point is in: its second corner is
    # one step along the largest of x0, y0, z0 (o1), its third one step along all but the
    # smallest (o2); ties broken as Gustavson's reference code
    x_ge_y, y_ge_z, x_ge_z = x0 >= y0, y0 >= z0, x0 >= z0
    o1 = torch.stack([x_ge_y & x_ge_z, ~x_ge_y & y_ge_z, ~(x_ge_z | y_ge_z)])
    o2 = torch.stack([x_ge_y | (y_ge_z & x_ge_z), ~x_ge_y | y_ge_z,
                      ~(y_ge_z & (x_ge_y | x_ge_z))])
    o1, o2 = o1.long(), o2.long()
    corners = torch.stack([torch.zeros_like(o1), o1, o2, torch.ones_like(o1)])  # (4, 3, ...)
    origin = torch.stack([x0, y0, z0])
    offsets = origin[None] - corners + G3 * torch.arange(4, device=x.device).reshape(
        4, *[1] * origin.dim())
    lattice = torch.stack([i, j, k]).long() & 255
    cell = lattice[None] + corners
    gradient_index = perm[cell[:, 0] + perm[cell[:, 1] + perm[cell[:, 2]]]] % 12
    gradient = GRADIENTS.to(x.device)[gradient_index]  # (4, ..., 3)
    falloff = (0.6 - (offsets ** 2).sum(dim=1)).clamp(min=0)
    dot = (gradient * offsets.movedim(1, -1)).sum(dim=-1)
    return 32.0 * (falloff ** 4 * dot).sum(dim=0)


@dataclass(frozen=True)
class SimplexNoise:
    """Octaves of simplex noise over image slices (AnoDDPM's and cDDPM's code defaults:
    6 octaves, persistence 0.8, frequency 64). `normalise` rescales each sample to zero mean
    and unit variance, as the forward process assumes of its noise; the authors' code does not
    (its raw sum has a standard deviation of about 0.7)."""

    octaves: int = 6
    persistence: float = 0.8
    frequency: float = 64.0
    normalise: bool = False

    def sample(self, shape: tuple[int, ...], t: torch.Tensor,
               generator: torch.Generator | None = None,
               device: str | torch.device = "cpu") -> torch.Tensor:
        """Noise of `shape` (batch, channels, height, width) for diffusion steps `t`
        (batch,), each sample's third coordinate its own step."""
        batch, channels, height, width = shape
        rows = torch.arange(height, dtype=torch.float32, device=device)
        columns = torch.arange(width, dtype=torch.float32, device=device)
        y, x = torch.meshgrid(rows, columns, indexing="ij")
        noise = torch.empty(shape, dtype=torch.float32, device=device)
        for b in range(batch):
            step = torch.full_like(x, float(t[b]))
            for c in range(channels):
                permutation = torch.randperm(256, generator=generator)
                noise[b, c] = self.octave_sum(x, y, step, permutation)
        if self.normalise:
            mean = noise.mean(dim=(1, 2, 3), keepdim=True)
            noise = (noise - mean) / noise.std(dim=(1, 2, 3), keepdim=True).clamp(min=1e-8)
        return noise

    def octave_sum(self, x: torch.Tensor, y: torch.Tensor, step: torch.Tensor,
                   permutation: torch.Tensor) -> torch.Tensor:
        """sum_o persistence^o simplex3(x / f_o, y / f_o, step / f_o), f_o = frequency / 2^o."""
        total = torch.zeros_like(x)
        frequency, amplitude = self.frequency, 1.0
        for _ in range(self.octaves):
            total += amplitude * simplex3(x / frequency, y / frequency, step / frequency,
                                          permutation)
            frequency /= 2
            amplitude *= self.persistence
        return total


@dataclass
class SimplexNoiseBank:
    """`size` simplex fields drawn once, for training: each sample takes one at random, flipped
    at random along each axis. A field's step coordinate only moves the slice through the 3D
    noise (nearly stationary, so its statistics barely change), the bank's steps are drawn as
    a training sample's are, and a training sample uses one field at one step: a field drawn
    at another step is as good a draw. What is saved is drawing the fields (a cDDPM training
    step on a CPU is 1.3-1.4x faster; benchmarks/noise_bank_step.py). Not for inference,
    where the fields of one sample's steps must be the same noise."""

    fields: torch.Tensor  # (size, height, width)

    @classmethod
    def draw(cls, size: int, height: int, width: int, seed: int,
             noise: SimplexNoise = SimplexNoise(), chunk: int = 64,
             device: str | torch.device = "cpu") -> SimplexNoiseBank:
        """The bank of `size` fields at steps drawn uniformly from 0..999, all from `seed`,
        computed on `device` (a GPU draws 4096 fields in seconds where 2 CPU cores take
        minutes; the seed's draws are the same, the fields equal up to float rounding) and
        kept on the CPU, where the training batches are put together."""
        generator = torch.Generator().manual_seed(seed)
        steps = torch.randint(1000, (size,), generator=generator)
        fields = [noise.sample((len(part), 1, height, width), part, generator, device)[:, 0].cpu()
                  for part in steps.split(chunk)]
        return cls(torch.cat(fields))

    def sample(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        """Noise of `shape` (batch, channels, height, width) from the bank's fields."""
        batch, channels, height, width = shape
        if (height, width) != tuple(self.fields.shape[1:]):
            raise ValueError(f"the bank holds {tuple(self.fields.shape[1:])} fields; "
                             f"{(height, width)} were asked for")
        count = batch * channels
        index = torch.randint(len(self.fields), (count,), generator=generator)
        flips = torch.rand(count, 2, generator=generator) < 0.5
        chosen = self.fields[index]
        chosen = torch.where(flips[:, 0, None, None], chosen.flip(1), chosen)
        chosen = torch.where(flips[:, 1, None, None], chosen.flip(2), chosen)
        return chosen.reshape(shape)


def gaussian_noise(shape: tuple[int, ...], generator: torch.Generator | None = None,
                   device: str | torch.device = "cpu") -> torch.Tensor:
    """Standard normal noise (drawn on the CPU, so that a seed gives the same noise on any
    device)."""
    return torch.randn(shape, generator=generator).to(device)

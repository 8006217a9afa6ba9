"""Noise for the forward process: simplex noise against an independent C implementation of
Gustavson's simplex noise (the `noise` package), AnoDDPM's octave sum, seeding, and the
smoothness that sets it apart from Gaussian noise."""

from __future__ import annotations

import pytest
import torch

from NeuroADLib.diffusion.noise import SimplexNoise, SimplexNoiseBank, gaussian_noise, simplex3

reference = pytest.importorskip("noise")

# Ken Perlin's reference permutation, the table the `noise` package is built with
PERLIN = torch.tensor([
    151, 160, 137, 91, 90, 15, 131, 13, 201, 95, 96, 53, 194, 233, 7, 225, 140, 36, 103,
    30, 69, 142, 8, 99, 37, 240, 21, 10, 23, 190, 6, 148, 247, 120, 234, 75, 0, 26,
    197, 62, 94, 252, 219, 203, 117, 35, 11, 32, 57, 177, 33, 88, 237, 149, 56, 87, 174,
    20, 125, 136, 171, 168, 68, 175, 74, 165, 71, 134, 139, 48, 27, 166, 77, 146, 158, 231,
    83, 111, 229, 122, 60, 211, 133, 230, 220, 105, 92, 41, 55, 46, 245, 40, 244, 102, 143,
    54, 65, 25, 63, 161, 1, 216, 80, 73, 209, 76, 132, 187, 208, 89, 18, 169, 200, 196,
    135, 130, 116, 188, 159, 86, 164, 100, 109, 198, 173, 186, 3, 64, 52, 217, 226, 250, 124,
    123, 5, 202, 38, 147, 118, 126, 255, 82, 85, 212, 207, 206, 59, 227, 47, 16, 58, 17,
    182, 189, 28, 42, 223, 183, 170, 213, 119, 248, 152, 2, 44, 154, 163, 70, 221, 153, 101,
    155, 167, 43, 172, 9, 129, 22, 39, 253, 19, 98, 108, 110, 79, 113, 224, 232, 178, 185,
    112, 104, 218, 246, 97, 228, 251, 34, 242, 193, 238, 210, 144, 12, 191, 179, 162, 241, 81,
    51, 145, 235, 249, 14, 239, 107, 49, 192, 214, 31, 181, 199, 106, 157, 184, 84, 204, 176,
    115, 121, 50, 45, 127, 4, 150, 254, 138, 236, 205, 93, 222, 114, 67, 29, 24, 72, 243,
    141, 128, 195, 78, 66, 215, 61, 156, 180,
])


def points(count: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(3, count, generator=torch.Generator().manual_seed(seed)) * 40 - 20


def test_simplex3_equals_the_c_reference():
    x, y, z = points(4000)
    ours = simplex3(x, y, z, PERLIN)
    theirs = torch.tensor([reference.snoise3(float(a), float(b), float(c))
                           for a, b, c in zip(x, y, z, strict=True)])
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert ours.abs().max() <= 1.0 and ours.std() > 0.3


def test_the_octave_sum_is_anoddpms():
    noise = SimplexNoise(octaves=4, persistence=0.7, frequency=16.0)
    y, x = torch.meshgrid(torch.arange(6.0), torch.arange(7.0), indexing="ij")
    step = torch.full_like(x, 250.0)
    ours = noise.octave_sum(x, y, step, PERLIN)
    theirs = torch.zeros_like(x)
    for octave in range(4):
        f = 16.0 / 2**octave
        theirs += 0.7**octave * torch.tensor(
            [[reference.snoise3(float(a) / f, float(b) / f, 250.0 / f) for a in range(7)]
             for b in range(6)])
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_the_same_seed_gives_the_same_noise_and_each_sample_its_own():
    noise = SimplexNoise()
    t = torch.tensor([100, 100, 700])
    first = noise.sample((3, 2, 24, 20), t, torch.Generator().manual_seed(5))
    again = noise.sample((3, 2, 24, 20), t, torch.Generator().manual_seed(5))
    assert torch.equal(first, again) and first.shape == (3, 2, 24, 20)
    assert not torch.allclose(first[0], first[1])        # own permutation per sample
    assert not torch.allclose(first[0, 0], first[0, 1])  # and per channel
    normalised = SimplexNoise(normalise=True).sample((3, 1, 24, 20), t,
                                                     torch.Generator().manual_seed(5))
    torch.testing.assert_close(normalised.mean(dim=(1, 2, 3)), torch.zeros(3), atol=1e-5,
                               rtol=0)
    torch.testing.assert_close(normalised.std(dim=(1, 2, 3)), torch.ones(3), atol=1e-5, rtol=0)


def test_simplex_noise_is_smooth_where_gaussian_noise_is_white():
    def neighbour_correlation(image: torch.Tensor) -> float:
        a, b = image[:, :-1].flatten(), image[:, 1:].flatten()
        return float(torch.corrcoef(torch.stack([a, b]))[0, 1])

    simplex = SimplexNoise().sample((1, 1, 96, 96), torch.tensor([500]),
                                    torch.Generator().manual_seed(0))[0, 0]
    white = gaussian_noise((96, 96), torch.Generator().manual_seed(0))
    assert neighbour_correlation(simplex) > 0.9
    assert abs(neighbour_correlation(white)) < 0.05


def test_a_noise_bank_holds_simplex_fields_and_draws_them_flipped_and_seeded():
    bank = SimplexNoiseBank.draw(10, 24, 20, seed=3, chunk=4)
    generator = torch.Generator().manual_seed(3)
    steps = torch.randint(1000, (10,), generator=generator)
    fields = torch.cat([SimplexNoise().sample((len(part), 1, 24, 20), part, generator)[:, 0]
                        for part in steps.split(4)])
    assert torch.equal(bank.fields, fields)
    drawn = bank.sample((6, 2, 24, 20), torch.Generator().manual_seed(1))
    assert torch.equal(drawn, bank.sample((6, 2, 24, 20), torch.Generator().manual_seed(1)))
    variants = [f for field in bank.fields
                for f in (field, field.flip(0), field.flip(1), field.flip(0).flip(1))]
    assert all(any(torch.equal(sample, v) for v in variants) for sample in drawn.flatten(0, 1))
    assert any(not any(torch.equal(sample, f) for f in bank.fields)
               for sample in drawn.flatten(0, 1))  # some were flipped
    with pytest.raises(ValueError, match="fields"):
        bank.sample((1, 1, 20, 24), generator)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_noise_bank_drawn_on_a_gpu_holds_the_cpu_fields_and_stays_on_the_cpu():
    on_gpu = SimplexNoiseBank.draw(10, 24, 20, seed=3, chunk=4, device="cuda")
    on_cpu = SimplexNoiseBank.draw(10, 24, 20, seed=3, chunk=4)
    assert on_gpu.fields.device.type == "cpu"
    torch.testing.assert_close(on_gpu.fields, on_cpu.fields, atol=1e-4, rtol=0)

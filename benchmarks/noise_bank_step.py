"""A cDDPM training step with fresh simplex fields against one with fields from a noise bank
(`neuroad train cddpm --noise-bank N`), on the default network and random 112 x 96 slices,
alternating the two so that a busy machine slows both alike; medians over the repeats.

    python benchmarks/noise_bank_step.py [--repeats 20] [--threads 2] [--device cuda]

As in training, the fields are drawn on the CPU (a fresh step's) or gathered from a bank held
there, and moved to the device with the batch.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from NeuroADLib.diffusion.noise import SimplexNoise, SimplexNoiseBank
from NeuroADLib.diffusion.process import DiffusionProcess
from NeuroADLib.methods.cddpm import cddpm_diffusion
from NeuroADLib.networks.conditioned_unet import CONDITIONED_UNET_CONFIGS, EncoderConditionedNetwork
from NeuroADLib.training.cddpm import cddpm_loss

SHAPE = (16, 1, 112, 96)  # the default batch of slices of the 2 mm grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    network = EncoderConditionedNetwork(CONDITIONED_UNET_CONFIGS["default"]).to(device)
    optimiser = torch.optim.Adam(network.parameters(), lr=2e-4)
    process = DiffusionProcess(cddpm_diffusion())
    bank = SimplexNoiseBank.draw(256, *SHAPE[2:], seed=0, device=device)
    generator = torch.Generator().manual_seed(0)

    def step(draw) -> float:
        began = time.perf_counter()
        x0 = torch.rand(SHAPE)
        t = torch.randint(process.num_timesteps, (SHAPE[0],), generator=generator)
        value = cddpm_loss(network, process, x0.to(device), t.to(device), draw(t).to(device))
        optimiser.zero_grad(set_to_none=True)
        value.backward()
        optimiser.step()
        value.item()  # waits for the device
        return time.perf_counter() - began

    fresh, banked = [], []
    for _ in range(args.repeats):
        fresh.append(step(lambda t: SimplexNoise().sample(SHAPE, t, generator)))
        banked.append(step(lambda t: bank.sample(SHAPE, generator)))
    a, b = statistics.median(fresh), statistics.median(banked)
    print(f"fresh fields {a:.3f} s a step, bank {b:.3f} s (median of {args.repeats}; "
          f"{args.threads} threads, {device}): {a / b:.2f}x")


if __name__ == "__main__":
    main()

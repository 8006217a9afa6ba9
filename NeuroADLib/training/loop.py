"""One resumable training loop for every network: per-step seeding, logging, checkpoints.

A trainer supplies its modules, optimisers and a step function `step(step, rng, generator)`
that draws everything random from the numpy `rng` and torch `generator` it is given (both
seeded from (seed, step)) and returns its losses. The loop checkpoints weights (safetensors)
and optimiser states (tensor-only torch files, loaded with weights_only) every
`checkpoint_every` steps and resumes from the last checkpoint (logging the loss history it
holds again, so that the log of a resumed run is whole), so that a resumed run equals an
uninterrupted one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .provenance import CHECKPOINT

StepFunction = Callable[[int, np.random.Generator, torch.Generator], dict[str, float]]


@dataclass(frozen=True)
class LoopSettings:
    steps: int
    seed: int = 0
    checkpoint_every: int = 250
    log_every: int = 25


def step_seeds(seed: int, step: int) -> tuple[np.random.Generator, torch.Generator]:
    """The numpy and torch generators of one step (also reseeds torch's global generator, for
    layers such as dropout that draw from it)."""
    torch.manual_seed(seed * 1_000_003 + step)
    return (np.random.default_rng([seed, step]),
            torch.Generator().manual_seed(seed * 1_000_003 + step))


def run_training(folder: Path, modules: dict[str, torch.nn.Module],
                 optimisers: dict[str, torch.optim.Optimizer], step: StepFunction,
                 settings: LoopSettings, log: Callable[[str], None] = print
                 ) -> list[dict[str, float]]:
    """Train (or resume) in `folder`/checkpoint and return the per-step loss history."""
    from safetensors.torch import load_file, save_file

    checkpoint = Path(folder) / CHECKPOINT
    checkpoint.mkdir(parents=True, exist_ok=True)
    start, history = 0, []
    if (checkpoint / "state.json").is_file():
        state = json.loads((checkpoint / "state.json").read_text())
        for name, module in modules.items():
            device = next(module.parameters()).device
            module.load_state_dict(load_file(str(checkpoint / f"{name}.safetensors"),
                                             device=str(device)))
        states = torch.load(checkpoint / "optimisers.pt", weights_only=True, map_location="cpu")
        for name, optimiser in optimisers.items():
            optimiser.load_state_dict(states[name])
        start, history = state["step"], state["history"]
        for number in range(settings.log_every, start + 1, settings.log_every):
            log(f"step {number}/{settings.steps}  "
                f"{_mean_losses(history[number - settings.log_every:number])}  (checkpoint)")
        log(f"resumed at step {start}")
    began = time.perf_counter()
    for number in range(start, settings.steps):
        rng, generator = step_seeds(settings.seed, number)
        history.append({"step": number, **step(number, rng, generator)})
        if (number + 1) % settings.log_every == 0:
            log(f"step {number + 1}/{settings.steps}  "
                f"{_mean_losses(history[-settings.log_every:])}  "
                f"{(time.perf_counter() - began) / (number + 1 - start):.3f} s/step")
        if (number + 1) % settings.checkpoint_every == 0 or number + 1 == settings.steps:
            for name, module in modules.items():
                save_file(module.state_dict(), str(checkpoint / f"{name}.safetensors"))
            torch.save({name: o.state_dict() for name, o in optimisers.items()},
                       checkpoint / "optimisers.pt")
            (checkpoint / "state.json").write_text(json.dumps({"step": number + 1,
                                                               "history": history}))
    return history


def _mean_losses(records: list[dict[str, float]]) -> str:
    """Each loss's mean over `records`, as the log prints it."""
    return "  ".join(f"{key} {np.mean([r[key] for r in records]):.5f}"
                     for key in records[-1] if key != "step")

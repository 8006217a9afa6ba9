"""One resumable training loop for every network: per-step seeding, logging, checkpoints.

A trainer supplies its modules, optimisers and a step function `step(step, rng, generator)`
that draws everything random from the numpy `rng` and torch `generator` it is given (both
seeded from (seed, step)) and returns its losses. The loop checkpoints weights (safetensors)
and optimiser states (tensor-only torch files, loaded with weights_only) every
`checkpoint_every` steps and resumes from the last checkpoint (logging the loss history it
holds again, so that the log of a resumed run is whole), so that a resumed run equals an
uninterrupted one. A SIGTERM or SIGINT (a batch system's time limit, Ctrl-C) lets the step under
way finish, checkpoints it and raises `Cancelled`: no step done is lost.

With `ema_decay` > 0 the loop also keeps an exponential moving average of every module's
weights (torch's `AveragedModel`, W_ema <- decay W_ema + (1 - decay) W after every step; the
longitudinal report trains with 0.999, as diffusion models commonly do), checkpoints it beside
the raw weights, and hands the averaged weights back in the modules when the run ends.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import Cancelled
from .provenance import CHECKPOINT

EMA_SUFFIX = ".ema.safetensors"
StepFunction = Callable[[int, np.random.Generator, torch.Generator], dict[str, float]]


@dataclass(frozen=True)
class LoopSettings:
    steps: int
    seed: int = 0
    checkpoint_every: int = 250
    log_every: int = 25
    ema_decay: float = 0.0  # 0: no moving average of the weights


def step_seeds(seed: int, step: int) -> tuple[np.random.Generator, torch.Generator]:
    """The numpy and torch generators of one step (also reseeds torch's global generator, for
    layers such as dropout that draw from it)."""
    torch.manual_seed(seed * 1_000_003 + step)
    return (np.random.default_rng([seed, step]),
            torch.Generator().manual_seed(seed * 1_000_003 + step))


def cosine_decay(step: int, base: float, decay_from: int | None, steps: int) -> float:
    """The learning rate of `step`: `base` until `decay_from` (None: always), then a half
    cosine down to zero at `steps`. A function of the step alone, so a resumed run sets the
    same rates as an uninterrupted one."""
    if decay_from is None or step < decay_from:
        return base
    progress = (step - decay_from) / max(steps - decay_from, 1)
    return base * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_learning_rate(optimiser: torch.optim.Optimizer, rate: float) -> None:
    """Set every parameter group of `optimiser` to `rate`."""
    for group in optimiser.param_groups:
        group["lr"] = rate


def run_training(folder: Path, modules: dict[str, torch.nn.Module],
                 optimisers: dict[str, torch.optim.Optimizer], step: StepFunction,
                 settings: LoopSettings, log: Callable[[str], None] = print
                 ) -> list[dict[str, float]]:
    """Train (or resume) in `folder`/checkpoint and return the per-step loss history. With
    `settings.ema_decay` the modules hold their moving-average weights on return (the raw
    weights stay in the checkpoint)."""
    from safetensors.torch import load_file, save_file

    checkpoint = Path(folder) / CHECKPOINT
    checkpoint.mkdir(parents=True, exist_ok=True)
    averages = _moving_averages(modules, settings.ema_decay)
    start, history = 0, []
    if (checkpoint / "state.json").is_file():
        state = json.loads((checkpoint / "state.json").read_text())
        for name, module in modules.items():
            device = next(module.parameters()).device
            module.load_state_dict(load_file(str(checkpoint / f"{name}.safetensors"),
                                             device=str(device)))
        for name, average in averages.items():
            _load_average(average, checkpoint / f"{name}{EMA_SUFFIX}", str(
                next(modules[name].parameters()).device), state["step"])
        states = torch.load(checkpoint / "optimisers.pt", weights_only=True, map_location="cpu")
        for name, optimiser in optimisers.items():
            optimiser.load_state_dict(states[name])
        start, history = state["step"], state["history"]
        for number in range(settings.log_every, start + 1, settings.log_every):
            log(f"step {number}/{settings.steps}  "
                f"{_mean_losses(history[number - settings.log_every:number])}  (checkpoint)")
        log(f"resumed at step {start}")

    def save(done: int) -> None:
        for name, module in modules.items():
            save_file(module.state_dict(), str(checkpoint / f"{name}.safetensors"))
        for name, average in averages.items():
            save_file(average.module.state_dict(), str(checkpoint / f"{name}{EMA_SUFFIX}"))
        torch.save({name: o.state_dict() for name, o in optimisers.items()},
                   checkpoint / "optimisers.pt")
        (checkpoint / "state.json").write_text(json.dumps({"step": done, "history": history}))

    began = time.perf_counter()
    with _stop_requests() as stop:
        for number in range(start, settings.steps):
            rng, generator = step_seeds(settings.seed, number)
            history.append({"step": number, **step(number, rng, generator)})
            for name, average in averages.items():
                average.update_parameters(modules[name])
            done = number + 1
            if done % settings.log_every == 0:
                log(f"step {done}/{settings.steps}  "
                    f"{_mean_losses(history[-settings.log_every:])}  "
                    f"{(time.perf_counter() - began) / (done - start):.3f} s/step")
            stopping = stop.is_set() and done < settings.steps
            if done % settings.checkpoint_every == 0 or done == settings.steps or stopping:
                save(done)
            if stopping:
                raise Cancelled(f"training stopped at step {done} of {settings.steps}; "
                                f"{checkpoint} holds every step done: the same command "
                                f"resumes it, and with --steps {done} finishes it there")
    for name, average in averages.items():
        modules[name].load_state_dict(average.module.state_dict())
    return history


@contextlib.contextmanager
def _stop_requests() -> Iterator[threading.Event]:
    """An event set by SIGTERM or SIGINT while the loop runs (in the main thread: signal
    handlers can only be set there; elsewhere the event is never set), the previous handlers
    restored afterwards."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    signals = (signal.SIGTERM, signal.SIGINT)
    previous = {number: signal.signal(number, lambda *_: stop.set()) for number in signals}
    try:
        yield stop
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _moving_averages(modules: dict[str, torch.nn.Module], decay: float
                     ) -> dict[str, torch.optim.swa_utils.AveragedModel]:
    """An exponential moving average of each module's parameters (buffers follow the module)."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1); got {decay}")
    if decay == 0.0:
        return {}
    average = torch.optim.swa_utils.get_ema_multi_avg_fn(decay)
    return {name: torch.optim.swa_utils.AveragedModel(module, multi_avg_fn=average)
            for name, module in modules.items()}


def _load_average(average: torch.optim.swa_utils.AveragedModel, path: Path, device: str,
                  steps: int) -> None:
    """Restore a checkpointed moving average, which has averaged `steps` steps."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: this checkpoint was written without "
                                "ema_decay; resume it with the settings it was started with")
    average.module.load_state_dict(load_file(str(path), device=device))
    average.n_averaged.fill_(steps)


def _mean_losses(records: list[dict[str, float]]) -> str:
    """Each loss's mean over `records`, as the log prints it (over the records that hold it:
    a run resumed by a newer version may log a figure its checkpoint's history lacks)."""
    return "  ".join(f"{key} {np.mean([r[key] for r in records if key in r]):.5f}"
                     for key in records[-1] if key != "step")

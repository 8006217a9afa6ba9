"""Progress reporting and cooperative cancellation, passed down the pipeline.

Long work calls `progress.step(name)` between its steps: that is where a cancellation takes
effect (by raising `Cancelled`, which removes partial outputs on the way up) and where the
command line, the worker and the Slicer module learn what is happening.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import Cancelled

SUBSTEP_INTERVAL = 0.25  # seconds between two reports inside a step
# on_step(done, total) after every inner step of a long computation (diffusion sampling):
# progress reports, and cancellation (it may raise to stop the computation).
StepCallback = Callable[[int, int], None]


def _ignore(event: dict) -> None:
    return None


def _never() -> bool:
    return False


@dataclass
class Progress:
    """`emit` receives event dicts; `is_cancelled` is polled at every step and sub-step.
    Progress events carry `step` of `total`, and inside a long step (diffusion sampling)
    `substep` of `substeps`, with an ETA for that step."""

    emit: Callable[[dict], None] = _ignore
    is_cancelled: Callable[[], bool] = _never
    total: int = 0
    done: int = 0
    started: float = field(default_factory=time.perf_counter)
    stage: str = ""
    _step_started: float = field(default_factory=time.perf_counter, repr=False)
    _last_substep_emit: float = field(default=0.0, repr=False)

    def step(self, name: str) -> None:
        """Mark the start of a step: check for cancellation, then report step/total/ETA."""
        if self.is_cancelled():
            raise Cancelled(f"Cancelled before {name}.")
        self.done += 1
        self.stage = name
        elapsed = time.perf_counter() - self.started
        total = max(self.total, self.done)
        eta = elapsed / max(self.done - 1, 1) * (total - self.done + 1) if self.done > 1 else None
        self.emit({"event": "progress", "stage": name, "step": self.done, "total": total,
                   "eta_s": None if eta is None else round(eta, 1)})
        self._step_started = time.perf_counter()
        self._last_substep_emit = 0.0

    def substep(self, done: int, of: int) -> None:
        """Progress inside the current step (e.g. diffusion sampling steps): checks for
        cancellation every time, reports at most every `SUBSTEP_INTERVAL` seconds with the
        step's own ETA, and always on the last one."""
        if self.is_cancelled():
            raise Cancelled(f"Cancelled at {done} of {of}.")
        now = time.perf_counter()
        if done < of and now - self._last_substep_emit < SUBSTEP_INTERVAL:
            return
        self._last_substep_emit = now
        elapsed = now - self._step_started
        self.emit({"event": "progress", "stage": self.stage, "step": self.done,
                   "total": max(self.total, self.done), "substep": done, "substeps": of,
                   "eta_s": round(elapsed / done * (of - done), 1)})

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


def _ignore(event: dict) -> None:
    return None


def _never() -> bool:
    return False


@dataclass
class Progress:
    """`emit` receives event dicts; `is_cancelled` is polled at every step."""

    emit: Callable[[dict], None] = _ignore
    is_cancelled: Callable[[], bool] = _never
    total: int = 0
    done: int = 0
    started: float = field(default_factory=time.perf_counter)

    def step(self, name: str) -> None:
        """Mark the start of a step: check for cancellation, then report step/total/ETA."""
        if self.is_cancelled():
            raise Cancelled(f"Cancelled before {name}.")
        self.done += 1
        elapsed = time.perf_counter() - self.started
        total = max(self.total, self.done)
        eta = elapsed / max(self.done - 1, 1) * (total - self.done + 1) if self.done > 1 else None
        self.emit({"event": "progress", "stage": name, "step": self.done, "total": total,
                   "eta_s": None if eta is None else round(eta, 1)})

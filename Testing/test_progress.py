"""Progress inside a step: reported with its own ETA, throttled, and a point of cancellation."""

from __future__ import annotations

import pytest

from NeuroADLib.errors import Cancelled
from NeuroADLib.progress import Progress


def test_substeps_report_the_current_stage_and_end_with_the_last_one():
    events = []
    progress = Progress(emit=events.append, total=3)
    progress.step("cadd: anomaly map")
    for done in range(1, 251):
        progress.substep(done, 250)
    inner = [e for e in events if "substep" in e]
    assert inner[0]["substep"] == 1  # the first report is never held back
    assert inner[-1] == {"event": "progress", "stage": "cadd: anomaly map", "step": 1,
                         "total": 3, "substep": 250, "substeps": 250, "eta_s": 0.0}
    assert len(inner) < 10  # 250 fast steps are not 250 events


def test_a_cancel_request_stops_inside_a_step():
    requests = iter([False, False, True])
    progress = Progress(is_cancelled=lambda: next(requests))
    progress.step("sampling")
    progress.substep(1, 100)
    with pytest.raises(Cancelled, match="2 of 100"):
        progress.substep(2, 100)

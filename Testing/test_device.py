"""Device choice and the CUDA out-of-memory fallback to the CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import IXI_SCAN, require

torch = pytest.importorskip("torch")

from NeuroADLib import pipeline  # noqa: E402
from NeuroADLib.device import select_device  # noqa: E402
from NeuroADLib.errors import UsageError  # noqa: E402
from NeuroADLib.methods import LoadedMethod, load_method  # noqa: E402
from NeuroADLib.models import find_bundle  # noqa: E402
from NeuroADLib.progress import Progress  # noqa: E402


def test_device_choice(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("cpu") == "cpu"
    assert select_device("auto") == "cpu"
    with pytest.raises(UsageError, match="no CUDA GPU"):
        select_device("cuda")
    with pytest.raises(UsageError, match="must be one of"):
        select_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device("auto") == "cuda"


class RunsOutOfGpuMemory:
    """A model that fails with CUDA OOM on the GPU and works on the CPU."""

    def __init__(self) -> None:
        self.device = "cpu"
        self.calls = []

    def to(self, device: str):
        self.device = device
        return self

    def predict(self, image, brain, subject, on_step=None):
        self.calls.append(self.device)
        if self.device == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return np.zeros_like(image), image * brain


@pytest.mark.slow
def test_out_of_memory_reruns_on_the_cpu(tmp_path, monkeypatch):
    scan = require(IXI_SCAN)
    monkeypatch.setattr(pipeline, "select_device", lambda preference: "cuda")
    bundle = find_bundle("zscore")
    real = load_method("zscore", bundle.folder)
    model = RunsOutOfGpuMemory()
    method = LoadedMethod("zscore", "t1", model, real.calibration)
    events = []
    reports = pipeline.run(scan, 40.0, "F", ["zscore"], tmp_path / "out",
                           progress=Progress(emit=events.append),
                           loaded_methods={("zscore", "{}"): (bundle, method)}, device="cuda")
    assert model.calls == ["cuda", "cpu"]
    assert reports["zscore"]["device"]["used"] == "cpu (after CUDA out of memory)"
    assert any(e["event"] == "log" and "out of memory" in e["message"] for e in events)
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["device"]["asked"] == "cuda"

"""The worker protocol: JSON-lines events, exit codes, cooperative cancel, persistent mode."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from conftest import IXI_SCAN, require

from NeuroADLib.errors import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_USAGE


def start(tmp_path, request: dict | None, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "NeuroADLib.worker", *extra]
    if request is not None:
        path = tmp_path / "request.json"
        path.write_text(json.dumps(request))
        args.append(str(path))
    return subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def events_of(process: subprocess.Popen, stdin: str = "") -> list[dict]:
    out, _ = process.communicate(stdin, timeout=600)
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def request(tmp_path, **changes) -> dict:
    return {"input": str(IXI_SCAN), "age": 38.8, "sex": "M", "methods": ["zscore"],
            "out": str(tmp_path / "out"), "id": "r1", **changes}


@pytest.mark.slow
def test_a_run_reports_stages_progress_and_the_result(tmp_path):
    require(IXI_SCAN)
    process = start(tmp_path, request(tmp_path))
    events = events_of(process)
    assert process.returncode == 0
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "result" and "error" not in kinds
    progress = [e for e in events if e["event"] == "progress"]
    steps = [e["step"] for e in progress if "substep" not in e]  # inner steps repeat theirs
    assert steps == list(range(1, len(steps) + 1))
    assert any("substep" in e for e in progress)  # the method's own steps (on_step)
    assert progress[-1]["step"] <= progress[-1]["total"]
    assert all(e["peak_memory_mb"] > 0 and e["id"] == "r1" for e in progress)
    stages = [e["stage"] for e in events if e["event"] == "stage"]
    assert stages[:2] == ["load models", "preprocess"]
    result = events[-1]
    assert any(p.endswith("anomaly_map.nii.gz") for p in result["outputs"])
    assert "abnormality_index" in result["reports"]["zscore"]


def test_bad_input_is_an_error_event_with_its_code(tmp_path):
    process = start(tmp_path, request(tmp_path, input=str(tmp_path / "missing.nii.gz")))
    events = events_of(process)
    assert process.returncode == EXIT_BAD_INPUT
    assert events[-1]["event"] == "error" and events[-1]["code"] == EXIT_BAD_INPUT
    assert "not found" in events[-1]["message"]
    assert not (tmp_path / "out").exists()


def test_malformed_request(tmp_path):
    process = start(tmp_path, None, "-")
    events = events_of(process, "{not json")
    assert process.returncode == EXIT_USAGE and "JSON" in events[-1]["message"]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigterm", "stop_file"])
def test_cancel_mid_run_leaves_no_outputs(tmp_path, how):
    require(IXI_SCAN)
    stop = tmp_path / "stop"
    process = start(tmp_path, request(tmp_path, stop_file=str(stop)))
    for line in process.stdout:
        if json.loads(line).get("stage") == "preprocess: n4":
            break
    if how == "sigterm":
        process.send_signal(signal.SIGTERM)
    else:
        stop.write_text("stop")
    events = [json.loads(line) for line in process.stdout if line.strip()]
    process.wait(timeout=300)
    assert process.returncode == EXIT_CANCELLED
    assert events[-1]["event"] == "error" and events[-1]["type"] == "Cancelled"
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


@pytest.mark.slow
def test_killed_worker_leaves_no_output_folder(tmp_path):
    require(IXI_SCAN)
    process = start(tmp_path, request(tmp_path))
    for line in process.stdout:
        if json.loads(line).get("stage") == "preprocess: registration":
            break
    process.kill()
    process.wait(timeout=60)
    time.sleep(0.2)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_persistent_worker_serves_several_requests(tmp_path):
    require(IXI_SCAN)
    process = start(tmp_path, None, "--persistent")
    lines = [json.dumps(request(tmp_path, out=str(tmp_path / f"out{k}"), id=f"r{k}"))
             for k in range(2)]
    events = events_of(process, "\n".join(lines) + "\n")
    assert process.returncode == 0
    results = [e for e in events if e["event"] == "result"]
    assert [e["id"] for e in results] == ["r0", "r1"]
    assert (tmp_path / "out0" / "report.json").is_file()
    assert (tmp_path / "out1" / "report.json").is_file()


@pytest.mark.slow
def test_the_next_run_removes_the_staging_folder_a_killed_worker_left(tmp_path):
    require(IXI_SCAN)
    process = start(tmp_path, request(tmp_path))
    for line in process.stdout:
        if json.loads(line).get("stage") == "zscore: back to the scan":
            break
    process.kill()
    process.wait(timeout=60)
    left = list(tmp_path.glob(".out.partial-*"))
    assert left and not (tmp_path / "out").exists()  # killed inside the staging folder
    again = start(tmp_path, request(tmp_path))
    assert events_of(again)[-1]["event"] == "result" and again.returncode == 0
    assert (tmp_path / "out" / "report.json").is_file()
    assert not list(tmp_path.glob(".out.partial-*"))


def test_a_sigterm_after_the_answer_does_not_turn_it_into_a_kill(tmp_path):
    """Python restores SIGTERM's default action while it shuts down: a cancel that comes just
    after a run has answered must not end the worker with -15 instead of its own code."""
    process = start(tmp_path, request(tmp_path, input=str(tmp_path / "missing.nii.gz")))
    assert json.loads(process.stdout.readline())["event"] == "error"  # answered
    while process.poll() is None:
        process.send_signal(signal.SIGTERM)
        time.sleep(0.001)
    assert process.returncode == EXIT_BAD_INPUT


def test_an_unreadable_request_file_is_a_usage_error(tmp_path):
    process = start(tmp_path, None, str(tmp_path / "missing.json"))
    events = events_of(process)
    assert process.returncode == EXIT_USAGE and "Cannot read the request" in events[-1]["message"]

"""The Slicer module's Qt-free support code: reading the engine's registry without heavy imports,
request checks and options, dependency checks, the compare layout, and the worker process
(event file, process-tree kill). None of it needs Slicer or slicer-core."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ElementTree
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

MODULE = Path(__file__).resolve().parents[1] / "NeuroAD"
sys.path.insert(0, str(MODULE))

from NeuroADSlicerLib import dependencies, engine, layout  # noqa: E402
from NeuroADSlicerLib.worker import WORKER_MODULE, WorkerProcess, WorkerSettings  # noqa: E402

from NeuroADLib.methods.registry import method_names  # noqa: E402

HEAVY = ("numpy", "scipy", "skimage", "torch", "monai", "SimpleITK", "nibabel")


def test_the_method_list_needs_no_heavy_package():
    """The module lists its methods before the engine's dependencies are installed."""
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(MODULE)!r})
        from NeuroADSlicerLib import engine
        names = [choice.name for choice in engine.methodChoices()]
        heavy = sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))
        print(names, heavy)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == f"{method_names()} []"


def test_methods_come_from_the_registry_with_their_models():
    choices = engine.methodChoices()
    assert [choice.name for choice in choices] == method_names()
    zscore = next(choice for choice in choices if choice.name == "zscore")
    assert zscore.available and zscore.model.startswith("zscore")
    assert zscore.covariates == ("age",)


def test_a_method_without_a_model_is_reported_not_offered(monkeypatch, tmp_path):
    from NeuroADLib.models import bundles

    monkeypatch.setattr(bundles, "BUNDLED", tmp_path / "none")
    monkeypatch.setenv(bundles.STORE_VARIABLE, str(tmp_path / "store"))
    choices = engine.methodChoices()
    assert not any(choice.available for choice in choices)
    problems = engine.requestProblems(True, 50, "F", ["zscore"], choices=choices)
    assert problems == ["install a model for zscore (Models section)"]


def test_request_problems_say_what_is_missing():
    assert engine.requestProblems(True, 50, "F", ["zscore"]) == []
    problems = engine.requestProblems(False, -1, "", [], "cadd.t_int")
    assert problems[:4] == ["choose an input volume", "enter the age (0-120 years)",
                            "choose the sex (F or M)", "select at least one method"]
    assert "METHOD.NAME=VALUE" in problems[4]
    assert engine.requestProblems(True, 121, "M", ["nope"])[1] == "nope is not a NeuroAD method"


def test_options_are_parsed_and_checked_against_the_registry():
    assert engine.parseOptions("cadd.t_int=1000, cadd.respacing=5 ldm.seed=3") == {
        "cadd": {"t_int": 1000, "respacing": 5}, "ldm": {"seed": 3}}
    assert engine.parseOptions("") == {}
    with pytest.raises(ValueError, match="cadd.t_int"):
        engine.parseOptions("zscore.t_int=3")


def test_requirements_hold_lower_bounds_and_never_slicer_packages():
    requirements = dependencies.readRequirements(MODULE / "Resources" / "requirements.txt")
    names = {Requirement(text).name.lower() for text in requirements}
    assert {"monai", "einops", "safetensors", "scikit-image"} <= names
    assert not names & {"torch", "numpy", "simpleitk", "requests"}
    assert all(spec.operator == ">=" for text in requirements
               for spec in Requirement(text).specifier)


def test_missing_requirements_and_protected_constraints():
    numpy = version("numpy")
    assert dependencies.missingRequirements([f"numpy>={numpy}", "pytest>=1"]) == []
    assert dependencies.missingRequirements(["numpy>=999", "no-such-package-xyz>=1"]) == [
        "numpy>=999", "no-such-package-xyz>=1"]
    assert f"numpy=={numpy}" in dependencies.protectedConstraints().splitlines()
    assert "pytest" in " ".join(dependencies.alreadyImported(["pytest>=1", "numpy>=1"]))


def test_compare_layout_has_one_linked_slice_view_per_method():
    for count in (1, 2, 4):
        methods = [f"m{k}" for k in range(count)]
        root = ElementTree.fromstring(layout.compareLayoutXml(methods))
        views = list(root.iter("view"))
        assert [v.get("singletontag") for v in views] == layout.compareViewNames(count)
        assert {v.get("class") for v in views} == {"vtkMRMLSliceNode"}
        rows = root.findall("./item/layout")
        assert len(rows) == (1 if count <= 3 else 2)


def test_cpu_runs_hide_the_gpu_and_a_separate_python_gets_a_clean_environment():
    settings = WorkerSettings(["/opt/cuda-env/bin/python"], baseEnvironment={"PATH": "/usr/bin"})
    assert settings.env("cpu") == {"PATH": "/usr/bin", "CUDA_VISIBLE_DEVICES": "-1"}
    assert settings.env("auto") == {"PATH": "/usr/bin"}
    command = settings.command(WORKER_MODULE, "request.json")
    assert command[:2] == ["/opt/cuda-env/bin/python", "-c"] and command[-1] == "request.json"
    assert str(engine.engineRoot()) in command[2]


def write_script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def test_worker_events_are_read_as_they_come(tmp_path):
    script = write_script(tmp_path, "talk.py", """
        import json, sys, time
        print(json.dumps({"event": "stage", "stage": "one"}), flush=True)
        sys.stdout.write('{"event": "log", "mess'); sys.stdout.flush()
        time.sleep(1.0)
        print('age": "half a line, then the rest"}', flush=True)
        print("not json", flush=True)
    """)
    process = WorkerProcess([sys.executable, str(script)], tmp_path / "w")
    process.start()
    time.sleep(0.5)
    assert process.poll() == [{"event": "stage", "stage": "one"}]
    process.wait(10)
    assert process.poll() == [{"event": "log", "message": "half a line, then the rest"},
                              {"event": "log", "message": "not json"}]
    assert process.returncode == 0


def test_kill_ends_the_whole_process_tree(tmp_path):
    """Like PythonSlicer, the "launcher" runs the real process as its child."""
    child = write_script(tmp_path, "child.py", """
        import time
        time.sleep(60)
    """)
    launcher = write_script(tmp_path, "launcher.py", f"""
        import subprocess, sys, pathlib
        process = subprocess.Popen([sys.executable, {str(child)!r}])
        pathlib.Path({str(tmp_path / "child.pid")!r}).write_text(str(process.pid))
        process.wait()
    """)
    process = WorkerProcess([sys.executable, str(launcher)], tmp_path / "w")
    process.start()
    pidFile = tmp_path / "child.pid"
    deadline = time.monotonic() + 20
    while not (pidFile.exists() and pidFile.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    childPid = int(pidFile.read_text())
    assert alive(childPid)
    process.kill()
    assert process.returncode is not None
    deadline = time.monotonic() + 5
    while alive(childPid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(childPid)


def alive(pid: int) -> bool:
    """Whether a process runs (a killed child whose parent died may linger as a zombie until
    init reaps it: that counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.is_file() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def test_persistent_worker_input_is_json_lines(tmp_path):
    script = write_script(tmp_path, "echo.py", """
        import json, sys
        for line in sys.stdin:
            print(json.dumps({"event": "result", "id": json.loads(line)["id"]}), flush=True)
    """)
    process = WorkerProcess([sys.executable, str(script)], tmp_path / "w")
    process.start(withInput=True)
    process.send({"id": "a"})
    process.send({"id": "b"})
    process.closeInput()
    process.wait(10)
    assert [event["id"] for event in process.poll()] == ["a", "b"]
    assert json.loads((tmp_path / "w" / "events.jsonl").read_text().splitlines()[0])["id"] == "a"


def test_the_extension_build_lists_every_module_file():
    """A file missing from NeuroAD/CMakeLists.txt would be missing from the built extension."""
    listed = set(re.findall(r"^\s+([\w/${}.]+\.(?:py|ui|png|txt))$",
                            (MODULE / "CMakeLists.txt").read_text(), re.MULTILINE))
    listed = {name.replace("${MODULE_NAME}", "NeuroAD") for name in listed}
    on_disk = {str(p.relative_to(MODULE)) for p in MODULE.rglob("*")
               if p.is_file() and p.suffix in {".py", ".ui", ".png", ".txt"}
               and "__pycache__" not in p.parts and p.name != "CMakeLists.txt"}
    assert listed == on_disk

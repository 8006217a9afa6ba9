"""How NeuroAD worker processes start, and one such process driven without threads or Qt.

The worker prints one JSON event per line. Its stdout goes to a file that `poll` reads from
where it stopped, so a GUI timer, a console loop and a test drive it alike, the GUI never
waits on a pipe, and a full pipe can never block the worker. The process starts in its own
process group (session), so that `kill` ends it together with everything it started:
`PythonSlicer` is a launcher that runs the real interpreter as a child.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .engine import engineRoot

EVENTS_FILE = "events.jsonl"
STDERR_FILE = "stderr.txt"
WORKER_MODULE = "NeuroADLib.worker"
BOOTSTRAP = ("import runpy, sys; sys.path.insert(0, {root!r}); "
             "runpy.run_module({module!r}, run_name='__main__', alter_sys=True)")


@dataclass
class WorkerSettings:
    """How worker processes start: the Python command (Slicer's PythonSlicer, or a separate
    environment, e.g. one with a CUDA build of torch), the environment it starts from (None:
    this process's), extra variables, and how long a cancelled run may take to stop on its own
    before it is killed."""

    python: list[str] = field(default_factory=lambda: [sys.executable])
    baseEnvironment: dict[str, str] | None = None
    environment: dict[str, str] = field(default_factory=dict)
    cancelGraceSeconds: float = 10.0

    def command(self, module: str, *args: str) -> list[str]:
        """`python -m module args`, with the engine imported from where this module found it
        (so that a separate environment runs the same engine version)."""
        bootstrap = BOOTSTRAP.format(root=str(engineRoot()), module=module)
        return [*self.python, "-c", bootstrap, *args]

    def env(self, device: str) -> dict[str, str]:
        env = {**(os.environ if self.baseEnvironment is None else self.baseEnvironment),
               **self.environment}
        if device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = "-1"  # CPU means no CUDA context either
        return env


class WorkerProcess:
    """One worker process; `folder` receives its event and stderr files."""

    def __init__(self, command: list[str], folder: Path, env: dict[str, str] | None = None):
        self.command = command
        self.folder = Path(folder)
        self.env = env
        self._process: subprocess.Popen | None = None
        self._offset = 0
        self._partial = b""

    def start(self, withInput: bool = False) -> None:
        """Start the process; `withInput` keeps its stdin open for `send` (persistent mode)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / EVENTS_FILE).open("wb") as events, \
                (self.folder / STDERR_FILE).open("wb") as stderr:
            self._process = subprocess.Popen(
                self.command, stdout=events, stderr=stderr, env=self.env,
                stdin=subprocess.PIPE if withInput else subprocess.DEVNULL, **_ownProcessGroup())

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        """The exit code, or None while the process runs."""
        return self._process.poll()

    def send(self, request: dict) -> None:
        """Write one request line to a persistent worker."""
        self._process.stdin.write((json.dumps(request) + "\n").encode())
        self._process.stdin.flush()

    def closeInput(self) -> None:
        """Tell a persistent worker that no request follows (it exits after the current one)."""
        if self._process.stdin and not self._process.stdin.closed:
            try:
                self._process.stdin.close()
            except BrokenPipeError:
                pass

    def poll(self) -> list[dict]:
        """The events printed since the last call. A line that is not JSON (a stray print)
        becomes a log event."""
        with (self.folder / EVENTS_FILE).open("rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        return [_parse(line) for line in lines if line.strip()]

    def wait(self, timeout: float | None = None) -> int:
        return self._process.wait(timeout)

    def kill(self) -> None:
        """End the process and every process it started."""
        if os.name == "nt":
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.pid)], capture_output=True,
                           check=False)
        else:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._process.wait()
        self.closeInput()

    def stderrTail(self, characters: int = 4000) -> str:
        """The end of what the process wrote to stderr (tracebacks, warnings)."""
        path = self.folder / STDERR_FILE
        return path.read_text(errors="replace")[-characters:] if path.is_file() else ""


def _parse(line: bytes) -> dict:
    text = line.decode(errors="replace").strip()
    try:
        event = json.loads(text)
    except json.JSONDecodeError:
        return {"event": "log", "message": text}
    return event if isinstance(event, dict) else {"event": "log", "message": text}


def _ownProcessGroup() -> dict:
    if os.name == "nt":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}

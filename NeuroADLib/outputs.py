"""Output folders that appear whole or not at all.

A run writes into a hidden staging folder beside its output (or in a given staging folder on
the same file system), `.OUT.partial-PID@HOST-XXXX`, renamed into place when the run succeeds
and removed when it fails or is cancelled. Only a killed process (SIGKILL, a crash, power loss)
leaves one behind; the next run into the same output on the same host removes those whose
process is gone (a process on another host of a cluster cannot be asked: the batch client
removes those once every attempt has ended).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError

STAGING_MARK = ".partial-"


def host_name() -> str:
    """This machine's name as it appears in staging folder names (no '-' or '@')."""
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def check_writable(folder: str | os.PathLike) -> Path:
    """Fail early, before any work, when `folder` cannot be created or written."""
    folder = Path(folder)
    existing = folder if folder.exists() else next(p for p in folder.parents if p.exists())
    if existing.exists() and not existing.is_dir():
        raise OutputError(f"Output path {existing} exists and is not a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"Output folder {existing} is not writable: choose another --out.")
    return folder


@contextmanager
def atomic_output_folder(folder: str | os.PathLike, staging_dir: str | os.PathLike | None = None):
    """Yield a staging folder (in `staging_dir`, default beside `folder`); on success its files
    move into `folder` (created if needed), on any failure the staging folder is removed and
    `folder` untouched."""
    folder = check_writable(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    root = Path(staging_dir) if staging_dir is not None else folder.parent
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(folder, root)
    staging = Path(tempfile.mkdtemp(
        prefix=f".{folder.name}{STAGING_MARK}{os.getpid()}@{host_name()}-", dir=root))
    staging.chmod(0o755)
    try:
        yield staging
        _publish(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _publish(staging: Path, folder: Path) -> None:
    """Move the staging folder's contents into `folder`: one rename when `folder` is new."""
    if not folder.exists():
        os.replace(staging, folder)
        return
    for item in staging.iterdir():
        target = folder / item.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
    staging.rmdir()


def remove_stale_staging(folder: str | os.PathLike, staging_dir: str | os.PathLike | None = None,
                         any_host: bool = False) -> list[Path]:
    """Remove the staging folders of `folder` (in `staging_dir`, default beside it) that
    killed processes of this host left behind; those of running processes stay. `any_host`
    also removes other hosts' (only safe when no attempt at `folder` can still be running).
    Returns what was removed."""
    folder = Path(folder)
    root = Path(staging_dir) if staging_dir is not None else folder.parent
    removed = []
    if not root.is_dir():
        return removed
    prefix = f".{folder.name}{STAGING_MARK}"
    for staging in root.glob(f"{glob.escape(prefix)}*"):
        if not staging.is_dir():
            continue
        owner = staging.name[len(prefix):].split("-")[0]
        pid, _, host = owner.partition("@")
        if host and host != host_name() and not any_host:
            continue
        if any_host or not (pid.isdigit() and _process_alive(int(pid))):
            shutil.rmtree(staging, ignore_errors=True)
            removed.append(staging)
    return removed


def _process_alive(pid: int) -> bool:
    """Whether a process with this id is running (another user's counts as running)."""
    if pid == os.getpid():
        return True
    if os.name == "nt":
        import ctypes

        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return ctypes.get_last_error() == 5  # ERROR_ACCESS_DENIED: it exists
        exit_code = ctypes.c_ulong()
        kernel32.GetExitCodeProcess(handle, ctypes.byref(exit_code))
        kernel32.CloseHandle(handle)
        return exit_code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True

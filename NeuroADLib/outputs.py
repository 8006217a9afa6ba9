"""Output folders that appear whole or not at all.

A run writes into a hidden staging folder beside its output, `.OUT.partial-PID-XXXX`, renamed
into place when the run succeeds and removed when it fails or is cancelled. Only a killed
process (SIGKILL, a crash, power loss) leaves one behind; the next run into the same output
removes those whose process is gone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError

STAGING_MARK = ".partial-"


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
def atomic_output_folder(folder: str | os.PathLike):
    """Yield a staging folder next to `folder`; on success its files move into `folder`
    (created if needed), on any failure the staging folder is removed and `folder` untouched."""
    folder = check_writable(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(folder)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}{STAGING_MARK}{os.getpid()}-",
                                    dir=folder.parent))
    staging.chmod(0o755)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not folder.exists():
        os.replace(staging, folder)
        return
    for item in staging.iterdir():
        target = folder / item.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
    staging.rmdir()


def remove_stale_staging(folder: str | os.PathLike) -> list[Path]:
    """Remove the staging folders of `folder` that killed processes left behind (those of
    running processes stay); returns what was removed."""
    folder = Path(folder)
    removed = []
    if not folder.parent.is_dir():
        return removed
    prefix = f".{folder.name}{STAGING_MARK}"
    for staging in folder.parent.iterdir():
        if not (staging.name.startswith(prefix) and staging.is_dir()):
            continue
        owner = staging.name[len(prefix):].split("-")[0]
        if not (owner.isdigit() and _process_alive(int(owner))):
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

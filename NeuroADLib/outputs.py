"""Output folders that appear whole or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError


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
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
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

"""The user's model store: import (folder or zip), fetch (URL + sha256), delete.

A bundle lands in the store only whole and verified: it is unpacked into a staging folder
beside the store, every file is checked against its manifest, then the folder is renamed into
place. Downloads resume from a `.part` file (HTTP Range), honour the usual proxy variables
(urllib reads http_proxy / https_proxy / no_proxy), and are checked against the sha256 the
caller gives before anything is unpacked.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from ..errors import ModelError
from ..training.provenance import sha256 as file_sha256
from .bundles import Bundle, _read, store_folder, verify_bundle

CHUNK = 1 << 20


def import_bundle(source: str | os.PathLike) -> Bundle:
    """Copy a bundle folder or zip into the store (replacing one with the same id)."""
    source = Path(source)
    store = store_folder()
    store.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".import-", dir=store))
    try:
        if source.is_dir():
            shutil.copytree(source, staging, dirs_exist_ok=True)
        elif zipfile.is_zipfile(source):
            _unzip(source, staging)
        else:
            raise ModelError(f"{source} is neither a bundle folder nor a zip file.")
        root = _bundle_root(staging)
        bundle = _read(root)
        if bundle is None:
            raise ModelError(f"{source} holds no manifest.json: not a NeuroAD model bundle.")
        verify_bundle(bundle)
        target = store / bundle.id
        if target.exists():
            shutil.rmtree(target)
        os.replace(root, target)
        return Bundle(target, bundle.manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fetch_bundle(url: str, sha256: str, timeout: float = 60.0) -> Bundle:
    """Download a zipped bundle (resuming a partial download), check its sha256, import it."""
    store = store_folder()
    partial_dir = store / ".downloads"
    partial_dir.mkdir(parents=True, exist_ok=True)
    part = partial_dir / f"{sha256}.zip.part"
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            resumed = response.status == 206
            with part.open("ab" if resumed else "wb") as handle:
                while block := response.read(CHUNK):
                    handle.write(block)
    except (urllib.error.URLError, OSError) as error:
        raise ModelError(
            f"Cannot download {url} ({getattr(error, 'reason', error)}). If this machine is "
            "offline, fetch the file elsewhere and use `neuroad models import FILE`; behind a "
            "proxy, set https_proxy."
        ) from None
    digest = file_sha256(part)
    if digest != sha256.lower():
        part.unlink()
        raise ModelError(f"Download of {url} has sha256 {digest}, expected {sha256}: deleted.")
    try:
        return import_bundle(part)
    finally:
        part.unlink(missing_ok=True)


def delete_bundle(bundle_id: str) -> Path:
    target = store_folder() / bundle_id
    if not (target / "manifest.json").is_file():
        raise ModelError(f"No model {bundle_id!r} in the store {store_folder()}.")
    shutil.rmtree(target)
    return target


def _unzip(archive: Path, into: Path) -> None:
    with zipfile.ZipFile(archive) as handle:
        for member in handle.namelist():
            if Path(member).is_absolute() or ".." in Path(member).parts:
                raise ModelError(f"{archive} has an unsafe path {member!r}: refused.")
        handle.extractall(into)


def _bundle_root(folder: Path) -> Path:
    """The folder holding manifest.json (the archive's root or its single top folder)."""
    if (folder / "manifest.json").is_file():
        return folder
    children = [p for p in folder.iterdir() if p.is_dir()]
    return children[0] if len(children) == 1 else folder


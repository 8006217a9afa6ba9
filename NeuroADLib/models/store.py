"""The user's model store: import (folder or zip), fetch (URL + sha256), delete.

A bundle lands in the store only whole and verified: it is unpacked into a staging folder
beside the store, every file is checked against its manifest, then the folder is renamed into
place. Downloads resume from a `.part` file (HTTP Range), honour the usual proxy variables
(urllib reads http_proxy / https_proxy / no_proxy), and are checked against the sha256 the
caller gives before anything is unpacked.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from ..errors import ModelError, UsageError
from ..hashing import sha256 as file_sha256
from .bundles import Bundle, _read, check_bundle_id, store_folder, verify_bundle

CHUNK = 1 << 20


def import_bundle(source: str | os.PathLike) -> Bundle:
    """Copy a bundle folder or zip into the store (replacing one with the same id)."""
    source = Path(source)
    store = store_folder()
    store.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".import-", dir=store))
    try:
        if source.is_dir():
            shutil.copytree(source, staging, symlinks=True, dirs_exist_ok=True)
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
    if not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise UsageError(f"--sha256 {sha256!r} is not a sha256 (64 hexadecimal digits).")
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise UsageError(f"{url!r} is not an http(s) URL; for a local file use "
                         "`neuroad models import FILE`.")
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
    target = store_folder() / check_bundle_id(bundle_id)
    if not (target / "manifest.json").is_file():
        raise ModelError(f"No model {bundle_id!r} in the store {store_folder()}.")
    shutil.rmtree(target)
    return target


def _unzip(archive: Path, into: Path) -> None:
    """Extract a zip, refusing it whole when any member could land outside `into` (an
    absolute path, a drive, '..', a symbolic link) or when the archive is damaged."""
    try:
        with zipfile.ZipFile(archive) as handle:
            for member in handle.infolist():
                parts = PurePosixPath(member.filename.replace("\\", "/")).parts
                is_link = (member.external_attr >> 16) & 0o170000 == 0o120000
                if (not parts or parts[0] == "/" or ".." in parts or ":" in parts[0]
                        or is_link):
                    raise ModelError(f"{archive} has an unsafe path {member.filename!r} (it "
                                     "would land outside the bundle's folder): refused.")
            handle.extractall(into)
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise ModelError(f"{archive} is a damaged zip ({error}); download it again.") from None


def _bundle_root(folder: Path) -> Path:
    """The folder holding manifest.json (the archive's root or its single top folder)."""
    if (folder / "manifest.json").is_file():
        return folder
    children = [p for p in folder.iterdir() if p.is_dir()]
    return children[0] if len(children) == 1 else folder


"""Finding and verifying model bundles: the user's store first, then those shipped inside the
package (found without any download).

A bundle verifies when its id is a plain folder name, its manifest lists at least one file,
every listed file is inside the bundle with its size and sha256, and every file of the bundle
is listed (training checkpoints aside): a weight file changed, removed, added, or dropped from
the manifest, and a manifest whose hashes were edited, are all refused.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError
from ..hashing import sha256

BUNDLED = Path(__file__).parent / "bundled"
CHECKPOINT = "checkpoint"  # a trained model's folder of training state (not part of a bundle)
STORE_VARIABLE = "NEUROAD_MODELS"
MANIFEST = "manifest.json"
_BUNDLE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Bundle:
    folder: Path
    manifest: dict

    @property
    def id(self) -> str:
        return self.manifest["id"]

    @property
    def method(self) -> str:
        return self.manifest["method"]


def store_folder() -> Path:
    """The user's model store: $NEUROAD_MODELS, else ~/.neuroad/models."""
    return Path(os.environ.get(STORE_VARIABLE, Path.home() / ".neuroad" / "models"))


def _read(folder: Path) -> Bundle | None:
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return None
    try:
        content = json.loads(manifest.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return None
    if not (isinstance(content, dict) and isinstance(content.get("id"), str)
            and isinstance(content.get("method"), str)):
        return None
    return Bundle(folder, content)


def list_bundles() -> list[Bundle]:
    """Every bundle in the store, then every bundle shipped with the package."""
    bundles = []
    for root in (store_folder(), BUNDLED):
        if root.is_dir():
            bundles += [b for b in map(_read, sorted(root.iterdir())) if b is not None]
    return bundles


def find_bundle(method: str) -> Bundle:
    """The first bundle of a method (the store's take precedence over shipped ones)."""
    for bundle in list_bundles():
        if method == bundle.method or method in bundle.manifest.get("variants", []):
            return bundle
    raise ModelError(
        f"No model for method {method!r} in {store_folder()} or in the package. Import or fetch "
        "one with `neuroad models`, or train it with `neuroad train`."
    )


def check_bundle_id(bundle_id: object) -> str:
    """A bundle id names a folder of the store: letters, digits, '.', '_', '-' only."""
    if not isinstance(bundle_id, str) or not _BUNDLE_ID.fullmatch(bundle_id):
        raise ModelError(f"Model id {bundle_id!r} is not a plain name (letters, digits, . _ -): "
                         "refused.")
    return bundle_id


def verify_bundle(bundle: Bundle) -> None:
    """Check the bundle's id, that every file the manifest lists is there, inside the bundle,
    with its size and sha256, and that the bundle holds no file the manifest does not list."""
    check_bundle_id(bundle.manifest.get("id"))
    files = bundle.manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ModelError(f"Model {bundle.id}: its manifest lists no files, so nothing can be "
                         "verified; reinstall or re-fetch it.")
    root = bundle.folder.resolve()
    for name, entry in files.items():
        path = bundle.folder / name
        if Path(name).is_absolute() or ".." in Path(name).parts or \
                not path.resolve().is_relative_to(root):
            raise ModelError(f"Model {bundle.id}: its manifest lists {name!r}, a path outside "
                             "the bundle: refused.")
        if not (isinstance(entry, dict) and isinstance(entry.get("bytes"), int)
                and isinstance(entry.get("sha256"), str) and _SHA256.fullmatch(entry["sha256"])):
            raise ModelError(f"Model {bundle.id}: the manifest entry of {name} is malformed "
                             "(it needs bytes and a sha256); reinstall or re-fetch the model.")
        if path.is_symlink() or not path.is_file():
            raise ModelError(f"Model {bundle.id}: file {name} is missing; reinstall or re-fetch.")
        if path.stat().st_size != entry["bytes"] or sha256(path) != entry["sha256"]:
            raise ModelError(f"Model {bundle.id}: {name} is corrupt (size or sha256 differs from "
                             "its manifest); reinstall or re-fetch it.")
    for path in sorted(bundle.folder.rglob("*")):
        name = path.relative_to(bundle.folder).as_posix()
        if path.is_symlink():
            raise ModelError(f"Model {bundle.id}: {name} is a symbolic link; a bundle holds "
                             "plain files only.")
        if path.is_file() and name != MANIFEST and name not in files \
                and CHECKPOINT not in Path(name).parts:
            raise ModelError(f"Model {bundle.id}: {name} is not listed in its manifest (a file "
                             "added, or dropped from the manifest); reinstall or re-fetch it.")


def verify_all() -> list[tuple[Path, str]]:
    """Every bundle folder of the store and the package with its problem ('' when it
    verifies), including folders whose manifest cannot be read."""
    results = []
    for root in (store_folder(), BUNDLED):
        if not root.is_dir():
            continue
        for folder in sorted(root.iterdir()):
            if not (folder / MANIFEST).is_file():
                continue
            bundle = _read(folder)
            if bundle is None:
                results.append((folder, f"{folder / MANIFEST} is not a readable manifest"))
                continue
            try:
                verify_bundle(bundle)
                results.append((folder, ""))
            except ModelError as error:
                results.append((folder, str(error)))
    return results

"""Finding and verifying model bundles: the user's store first, then those shipped inside the
package (found without any download)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError
from ..training.provenance import sha256

BUNDLED = Path(__file__).parent / "bundled"
STORE_VARIABLE = "NEUROAD_MODELS"


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
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        return Bundle(folder, json.loads(manifest.read_text()))
    except (json.JSONDecodeError, KeyError):
        return None


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


def verify_bundle(bundle: Bundle) -> None:
    """Check that every file the manifest lists is there with its size and sha256."""
    for name, entry in bundle.manifest.get("files", {}).items():
        path = bundle.folder / name
        if not path.is_file():
            raise ModelError(f"Model {bundle.id}: file {name} is missing; reinstall or re-fetch.")
        if path.stat().st_size != entry["bytes"] or sha256(path) != entry["sha256"]:
            raise ModelError(f"Model {bundle.id}: {name} is corrupt (size or sha256 differs from "
                             "its manifest); reinstall or re-fetch it.")

"""What every trained model carries: its manifest (what, from which data, how, and how well)
and its weights as shipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from .. import __version__
from ..hashing import sha256
from ..models.bundles import CHECKPOINT


def code_version() -> str:
    """The package version plus the git commit (and '-dirty') when run from a checkout, or
    $NEUROAD_CODE_VERSION where the code is a copy without its history (a GPU server)."""
    if os.environ.get("NEUROAD_CODE_VERSION"):
        return os.environ["NEUROAD_CODE_VERSION"]
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__


def half_precision(state: dict) -> dict:
    """A state dict with floating-point tensors in float16 (contiguous, on the CPU): shipped
    weights take half the space, and loading casts them back to the network's precision."""
    return {name: (tensor.half() if tensor.is_floating_point() else tensor).cpu().contiguous()
            for name, tensor in state.items()}


def command_line() -> str:
    """The `neuroad` command this process runs."""
    return " ".join(["neuroad", *sys.argv[1:]]) if sys.argv else ""


def file_entry(path: Path) -> dict:
    """A manifest's record of one file: its size and sha256."""
    return {"bytes": path.stat().st_size, "sha256": sha256(path)}


def write_manifest(folder: Path, **fields) -> Path:
    """manifest.json with the given fields, the training command, code version, time, and the
    size and sha256 of every other file in the folder and its sub-folders (training
    checkpoints aside)."""
    files = {p.relative_to(folder).as_posix(): file_entry(p)
             for p in sorted(folder.rglob("*")) if p.is_file() and p != folder / "manifest.json"
             and CHECKPOINT not in p.relative_to(folder).parts}
    manifest = {
        **fields,
        "training_command": command_line(),
        "code_version": code_version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": files,
    }
    path = folder / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2, default=float))
    return path


def save_network(folder: Path, network, stem: str, **fields) -> Path:
    """A trained network's weights in half precision (`stem`.safetensors, sharded when large)
    and its manifest: the config it was built with (`network.config`) and `fields`."""
    from ..models.weights import save_weights

    save_weights(half_precision(network.state_dict()), folder, stem)
    return write_manifest(folder, config=network.config.to_dict(), weights="float16", **fields)

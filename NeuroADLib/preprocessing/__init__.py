"""Native scan <-> model grid: reorient, N4, registration to MNI, brain mask, resample,
normalise, and the exact inverse.

The names below load with their modules on first use, so that the parts that need no
SimpleITK (intensity harmonisation, which the methods use) import on a machine without it,
such as a lent GPU machine that trains and evaluates on grid packs.
"""

from __future__ import annotations

from importlib import import_module

_EXPORTS = {
    "PreprocessResult": ".pipeline",
    "preprocess": ".pipeline",
    "PreprocessedCase": ".files",
    "load_preprocessed": ".files",
    "save_preprocessed": ".files",
    "grid_to_native": ".spatial",
    "load_transform": ".spatial",
    "native_to_grid": ".spatial",
    "save_transform": ".spatial",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name], __name__), name)

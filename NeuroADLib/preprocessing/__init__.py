"""Native scan <-> model grid: reorient, N4, registration to MNI, brain mask, resample,
normalise, and the exact inverse."""

from .files import PreprocessedCase, load_preprocessed, save_preprocessed
from .pipeline import PreprocessResult, preprocess
from .spatial import grid_to_native, load_transform, native_to_grid, save_transform

__all__ = [
    "PreprocessResult",
    "PreprocessedCase",
    "grid_to_native",
    "load_preprocessed",
    "load_transform",
    "native_to_grid",
    "preprocess",
    "save_preprocessed",
    "save_transform",
]

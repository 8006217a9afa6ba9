"""Anomaly-detection methods, found by name.

A method is loaded from its model folder and turns a grid image (normalised, brain only) into
an anomaly map and a pseudo-healthy image; its calibration (healthy-calibrated threshold and
healthy reference statistics for the abnormality index) travels in the same folder.
"""

from .base import Calibration, LoadedMethod, load_method
from .registry import METHODS, MethodInfo, method_names

__all__ = ["METHODS", "Calibration", "LoadedMethod", "MethodInfo", "load_method",
           "method_names"]

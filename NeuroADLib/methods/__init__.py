"""Anomaly-detection methods, found by name.

A method is loaded from its model folder and turns a grid image (normalised, brain only) into
an anomaly map and a pseudo-healthy image; its calibration (healthy-calibrated threshold and
healthy reference statistics for the abnormality index) travels in the same folder. The
registry names, per method, the loader that builds its model; every model keeps the
`AnomalyModel` contract.

    method = load_method("zscore", find_bundle("zscore").folder).to("cpu")
    anomaly, healthy = method.predict(image, brain, Subject(age=54, sex="F"))
"""

from .base import AnomalyModel, Calibration, LoadedMethod, load_method
from .registry import METHODS, MethodInfo, method_names

__all__ = ["METHODS", "AnomalyModel", "Calibration", "LoadedMethod", "MethodInfo",
           "load_method", "method_names"]

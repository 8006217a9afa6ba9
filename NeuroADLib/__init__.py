"""NeuroAD engine: unsupervised anomaly detection in brain MRI with diffusion models.

Pure Python (no Slicer, Qt or VTK imports); torch and MONAI are imported only by the parts
that need them.
"""

__version__ = "0.1.0"

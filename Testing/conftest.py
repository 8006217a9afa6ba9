"""Shared fixtures: the real data beside the repository and small synthetic volumes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NEUROAD_SHARED_DATA", REPO.parent / "shared" / "data"))
IXI = SHARED_DATA / "ixi_t1_2mm"
IXI_SCAN = IXI / "IXI012-HH-1211_T1.nii.gz"
MS_T1 = SHARED_DATA / "lesions" / "ms_patient19" / "t1.nii.gz"
CLINICAL_T1 = SHARED_DATA / "clinical_raw" / "tcga_fg_6692" / "t1.nii.gz"


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set NEUROAD_SHARED_DATA)")
    return path


@pytest.fixture(scope="session", autouse=True)
def _two_threads():
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)


def oblique_image(size=(40, 36, 24), spacing=(1.1, 0.9, 2.5), seed=0) -> sitk.Image:
    """A random float volume with an oblique direction, odd origin and anisotropic spacing."""
    rng = np.random.default_rng(seed)
    image = sitk.GetImageFromArray(rng.normal(100, 20, tuple(reversed(size))).astype(np.float32))
    rotation = sitk.VersorTransform((0.2, -0.1, 0.3), 0.4).GetMatrix()
    image.SetDirection(rotation)
    image.SetSpacing(spacing)
    image.SetOrigin((-12.5, 30.25, -7.0))
    return image

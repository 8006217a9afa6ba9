"""The consensus of several methods: per voxel, how many flag it."""

import json

import numpy as np
import SimpleITK as sitk

from NeuroADLib.pipeline import write_consensus


def _mask(array: np.ndarray, like: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.CopyInformation(like)
    return image


def test_consensus_counts_the_methods_that_flag_each_voxel(tmp_path):
    native = sitk.Image(8, 6, 4, sitk.sitkFloat32)
    native.SetSpacing((2.0, 1.0, 3.0))
    native.SetOrigin((5.0, -3.0, 1.0))
    a, b, c = (np.zeros((4, 6, 8), bool) for _ in range(3))
    a[1, 2, 2:6] = True
    b[1, 2, 4:8] = True
    c[1, 2, 5] = True
    summary = write_consensus({"zscore": _mask(a, native), "cadd": _mask(b, native),
                               "mad_ad": _mask(c, native)}, native, tmp_path)
    image = sitk.ReadImage(str(tmp_path / "consensus.nii.gz"))
    count = sitk.GetArrayFromImage(image)
    assert count.dtype == np.uint8
    np.testing.assert_array_equal(count, a.astype(int) + b + c)
    assert image.GetSpacing() == native.GetSpacing() and image.GetOrigin() == native.GetOrigin()
    voxel_ml = 6.0 / 1000
    assert summary["volume_ml_flagged_by_at_least"] == {
        "1": 6 * voxel_ml, "2": 2 * voxel_ml, "3": 1 * voxel_ml}
    assert json.loads((tmp_path / "consensus.json").read_text()) == summary
    assert summary["methods"] == ["zscore", "cadd", "mad_ad"]

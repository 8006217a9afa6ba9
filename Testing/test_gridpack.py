"""Grid packs: a cohort or benchmark set in one .npz that training reads without SimpleITK."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import fabricated_cohort

from NeuroADLib.errors import InputError
from NeuroADLib.gridpack import IMAGE_LEVELS, pack_cohort, read_pack, write_pack
from NeuroADLib.training.data import load_split

SHAPE = (12, 14, 10)


def test_a_packed_cohort_reads_as_the_folder_does_up_to_8_bit_rounding(tmp_path):
    cohort = fabricated_cohort(tmp_path / "cohort", SHAPE, 8)
    pack = pack_cohort(cohort, tmp_path / "cohort.npz")
    for split in ("train", "validation"):
        folder, packed = load_split(cohort, split), load_split(pack, split)
        assert packed.subjects == folder.subjects
        assert packed.ages == folder.ages and packed.sexes == folder.sexes
        for image, original in zip(packed.images, folder.images, strict=True):
            assert image.dtype == np.float32
            assert np.abs(image - original).max() <= 0.5 / IMAGE_LEVELS + 1e-7
        for mask, original in zip(packed.masks, folder.masks, strict=True):
            assert np.array_equal(mask, original)


def test_only_the_splits_asked_for_are_packed(tmp_path):
    cohort = fabricated_cohort(tmp_path / "cohort", SHAPE, 8)
    pack = read_pack(pack_cohort(cohort, tmp_path / "v.npz", ("validation",)))
    assert {row["split"] for row in pack.rows} == {"validation"}
    assert len(pack.rows) == 2


def test_a_row_without_a_lesion_mask_has_none(tmp_path):
    image = np.random.default_rng(0).random(SHAPE).astype(np.float32)
    pack = read_pack(write_pack([{"case": "a"}], [{"image": image, "brain_mask": image > 0.5}],
                                tmp_path / "p.npz"))
    assert pack.volume(0, "lesion_mask") is None
    assert np.array_equal(pack.volume(0, "brain_mask"), image > 0.5)


def test_a_file_that_is_not_a_pack_is_refused(tmp_path):
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(InputError, match="not a NeuroAD grid pack"):
        read_pack(tmp_path / "other.npz")
    with pytest.raises(InputError, match="not found"):
        read_pack(tmp_path / "missing.npz")

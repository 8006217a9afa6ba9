"""Grid volumes as axial slice batches and back."""

import numpy as np
import pytest

from NeuroADLib.slices import brain_slices, map_slices, slice_batch_size


def _brain(shape=(12, 10, 8)):
    brain = np.zeros(shape, bool)
    brain[2:10, 2:8, 2:6] = True
    brain[1, 5, 4] = True  # one voxel: under the minimum share of the largest slice
    return brain


def test_brain_slices_leave_out_slices_without_enough_brain():
    assert brain_slices(_brain()).tolist() == list(range(2, 10))
    assert brain_slices(np.zeros((4, 3, 3), bool)).size == 0


def test_slices_round_trip_in_any_batch_size():
    brain = _brain()
    volume = np.random.default_rng(0).random(brain.shape).astype(np.float32)
    for batch_size in (1, 3, 8, 50):
        out = map_slices(volume, brain, lambda slices, masks, indices: slices, batch_size)
        assert np.array_equal(out[2:10], volume[2:10])
        assert not out[:2].any() and not out[10:].any()


def test_process_sees_its_slice_indices():
    brain = _brain()
    out = map_slices(np.zeros(brain.shape, np.float32), brain,
                     lambda slices, masks, indices: np.broadcast_to(
                         indices[:, None, None], slices.shape).astype(np.float32), 3)
    assert [out[z, 0, 0] for z in range(2, 10)] == list(range(2, 10))


def test_progress_is_per_batch_and_can_cancel():
    brain = _brain()
    heard = []
    map_slices(np.zeros(brain.shape, np.float32), brain, lambda s, m, i: s, 3,
               lambda done, total: heard.append((done, total)))
    assert heard == [(1, 3), (2, 3), (3, 3)]

    def stop(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        map_slices(np.zeros(brain.shape, np.float32), brain, lambda s, m, i: s, 3, stop)


def test_batch_size_follows_the_memory_budget():
    assert slice_batch_size((112, 96), memory_bytes=1) == 1
    assert slice_batch_size((112, 96), memory_bytes=1e12) == 64
    small, large = (slice_batch_size((112, 96), memory_bytes=m) for m in (2e8, 8e8))
    assert 1 <= small < large

"""Output folders appear whole or not at all."""

from __future__ import annotations

import pytest

from NeuroADLib.errors import EXIT_OUTPUT, OutputError
from NeuroADLib.outputs import atomic_output_folder, check_writable


def test_failure_leaves_nothing(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_output_folder(target) as staging:
            (staging / "half.nii.gz").write_text("partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_success_creates_or_updates_the_folder(tmp_path):
    target = tmp_path / "out"
    with atomic_output_folder(target) as staging:
        (staging / "a.txt").write_text("1")
    assert (target / "a.txt").read_text() == "1"
    with atomic_output_folder(target) as staging:
        (staging / "a.txt").write_text("2")
        (staging / "b.txt").write_text("3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (target / "a.txt").read_text() == "2" and (target / "b.txt").read_text() == "3"


def test_output_under_a_file_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="not a folder") as error:
        check_writable(blocker / "out")
    assert error.value.exit_code == EXIT_OUTPUT

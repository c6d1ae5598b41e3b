"""Crash-safe writes: a file is replaced whole or not at all, under the temporary names the clean-ups recognise."""

import os

import pytest

from smat_peft.atomic_io import atomic_write, atomic_write_text


def test_atomic_write_replaces_the_file_through_a_pid_named_sibling(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("old")
    seen = []

    def write(tmp):
        seen.append(tmp)
        with open(tmp, "w") as f:
            f.write("new")

    atomic_write(path, write)
    assert path.read_text() == "new"
    assert seen == [f"{path}.tmp-{os.getpid()}"]
    assert os.listdir(tmp_path) == ["results.json"]


def test_a_failing_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "latest"
    atomic_write_text(path, "checkpoint-1")

    def write(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        atomic_write(path, write)
    assert path.read_text() == "checkpoint-1"
    assert os.listdir(tmp_path) == ["latest"]

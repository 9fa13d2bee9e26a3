"""segnet.atomic: the one way segnet writes a file in place."""

from __future__ import annotations

import os

import pytest

from segnet.atomic import atomic_path, atomic_write, atomic_write_text, temp_path


def test_replaces_the_target_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("old")
    assert atomic_write_text(target, "new\n", fsync=True) == target
    assert target.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_failing_writer_keeps_the_old_file_and_removes_the_temporary_one(tmp_path):
    target = tmp_path / "sub.csv"
    target.write_text("old")

    def half(tmp):
        tmp.write_text("id,rle")  # half-written, then the disk is full
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(target, half)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["sub.csv"]
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:  # Ctrl-C midway: same
        (tmp / "a").mkdir(parents=True)
        raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["sub.csv"]


def test_temporary_names_are_hidden_unique_and_keep_the_suffix(tmp_path):
    a, b = temp_path(tmp_path / "last_e0003.keras"), temp_path(tmp_path / "last_e0003.keras")
    assert a != b and a.parent == tmp_path
    assert a.name.startswith(".last_e0003.tmp-") and a.suffix == ".keras"  # Keras insists on .keras
    assert temp_path(tmp_path / "ds", "old").name.startswith(".ds.old-")


def test_leftovers_of_a_killed_writer_go_at_the_next_write(tmp_path):
    """SIGKILL midway leaves a temporary file; the next atomic write in that folder removes it (its pid is
    dead), and leaves a live writer's alone."""
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    left = tmp_path / f".last_e0002.tmp-{dead}-0.keras"
    left.write_text("half")
    (tmp_path / f".sub.tmp-{dead}-3").mkdir()
    live = tmp_path / f".other.tmp-{os.getppid()}-0.csv"
    live.write_text("being written")
    atomic_write_text(tmp_path / "state.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "state.json"])

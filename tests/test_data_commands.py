"""`segnet data check|synth|get` functions (the CLI maps DataError to one line + exit 2)."""

from __future__ import annotations

import pytest

from segnet import paths
from segnet.data import commands
from segnet.errors import DataError


def test_cmd_check_prints_counts(tiny_synth, capsys):
    assert commands.cmd_check(tiny_synth) == 0
    out = capsys.readouterr().out
    for word in ("images: 48", "masks: 48", "empty masks:", "depth range:"):
        assert word in out


def test_cmd_check_invalid(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "nope")):
        commands.cmd_check(tmp_path / "nope")


def test_cmd_synth_refuses_to_clobber_other_folders(tmp_path, capsys):
    out = tmp_path / "s"
    assert commands.cmd_synth(out, 10, 1) == 0
    assert "images: 10" in capsys.readouterr().out
    assert commands.cmd_synth(out, 12, 1) == 0  # a dataset folder is replaced
    assert len(list((out / "train/images").iterdir())) == 12
    other = tmp_path / "mine"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(DataError, match="refusing"):
        commands.cmd_synth(other, 5, 0)
    assert (other / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "s"]  # no temp folders left


def test_cmd_get_without_kaggle_explains_and_makes_synthetic(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(paths, "TGS_DIR", tmp_path / "tgs")
    monkeypatch.setattr(paths, "SYNTHETIC_DIR", tmp_path / "synthetic")
    monkeypatch.delenv("TGS_DATA", raising=False)
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle"))
    monkeypatch.setattr(commands, "_synth_defaults", lambda: (15, 2))
    assert commands.cmd_get() == 0
    out = capsys.readouterr().out
    assert "pip install kaggle" in out and "kaggle competitions download -c tgs-salt-identification-challenge" in out
    assert "TGS_DATA" in out and "images: 15" in out
    assert commands.cmd_get() == 0  # second time: already there, just checked
    assert "already" in capsys.readouterr().out


def test_cmd_check_fails_for_zero_images(empty_dataset):
    """A header-only train.csv (and empty folders) is no dataset: `data check` must not say ok."""
    d = empty_dataset
    with pytest.raises(DataError, match="no training images") as e:
        commands.cmd_check(d)
    assert str(d / "train.csv") in str(e.value)


def test_cmd_synth_into_an_unwritable_place(tmp_path):
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "synth"
    with pytest.raises(DataError) as e:
        commands.cmd_synth(out, 8, 0)
    assert str(out) in str(e.value) and "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_cmd_synth_negative_seed(tmp_path):
    with pytest.raises(DataError, match="--seed"):
        commands.cmd_synth(tmp_path / "s", 8, -1)
    assert list(tmp_path.iterdir()) == []

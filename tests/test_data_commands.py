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

"""Shared fixtures: tiny synthetic datasets in the Kaggle layout (generated once per session)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory) -> Path:
    """48 synthetic training images (+4 test images), seed 0. Read-only: copy it before changing it."""
    from segnet.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("tiny_synth") / "synthetic", n=48, seed=0, progress=False)


@pytest.fixture(scope="session", autouse=True)
def _folds_in_tmp(tmp_path_factory):
    """Fold CSVs written by tests go to a temporary folder, not the checkout's data/folds."""
    from segnet import paths

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(paths, "FOLDS_DIR", tmp_path_factory.mktemp("folds"))
        yield


@pytest.fixture
def empty_dataset(tmp_path) -> Path:
    """A dataset folder in the Kaggle layout with headers and folders but not one image."""
    d = tmp_path / "empty"
    (d / "train/images").mkdir(parents=True)
    (d / "train/masks").mkdir(parents=True)
    (d / "train.csv").write_text("id,rle_mask\n")
    (d / "depths.csv").write_text("id,z\n")
    return d

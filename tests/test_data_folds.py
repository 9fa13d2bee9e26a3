"""Folds: stratified by coverage class, balanced, reproducible, order-independent, cached."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from segnet.data.folds import coverage_class, load_or_make_folds, make_folds, split
from segnet.errors import ConfigError


@pytest.fixture(scope="module")
def masks_ids():
    rng = np.random.default_rng(0)
    n = 230
    cov = np.where(rng.random(n) < 0.4, 0.0, rng.random(n))
    masks = np.zeros((n, 101, 101, 1), np.float32)
    for k, c in enumerate(cov):
        masks[k].reshape(-1)[: int(round(c * 101 * 101))] = 1.0
    ids = [f"{rng.integers(0, 16**10):010x}" for _ in range(n)]
    return masks, ids


def test_coverage_class_is_ceil_tenths():
    assert coverage_class(np.array([0.0, 1e-4, 0.1, 0.1001, 0.55, 1.0])).tolist() == [0, 1, 1, 2, 6, 10]


def test_stratified_and_balanced(masks_ids):
    masks, ids = masks_ids
    df = make_folds(ids, masks, n_folds=5, seed=0)
    assert list(df.columns) == ["id", "coverage", "coverage_class", "fold"] and df["id"].tolist() == ids
    sizes = df["fold"].value_counts()
    assert set(sizes.index) == set(range(5)) and sizes.max() - sizes.min() <= 1
    per_class = df.groupby(["coverage_class", "fold"]).size().unstack(fill_value=0)
    assert ((per_class.max(axis=1) - per_class.min(axis=1)) <= 1).all()


def test_reproducible_and_order_independent(masks_ids):
    masks, ids = masks_ids
    a = make_folds(ids, masks, 5, seed=3).set_index("id")["fold"]
    perm = np.random.default_rng(1).permutation(len(ids))
    b = make_folds([ids[k] for k in perm], masks[perm], 5, seed=3).set_index("id")["fold"]
    assert a.sort_index().equals(b.sort_index())
    c = make_folds(ids, masks, 5, seed=4).set_index("id")["fold"]
    assert not a.sort_index().equals(c.sort_index())


def test_split_partitions_and_caches(masks_ids, tmp_path):
    masks, ids = masks_ids
    seen = []
    for f in range(4):
        tr, va = split(ids, masks, n_folds=4, fold=f, seed=0, folds_dir=tmp_path)
        assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(ids)
        seen.append(va)
    assert sorted(np.concatenate(seen).tolist()) == list(range(len(ids)))
    files = list(tmp_path.glob("*.csv"))
    assert len(files) == 1 and "_4f_0" in files[0].name
    # The cached file is what is used: change it and the split follows.
    df = load_or_make_folds(ids, masks, 4, 0, tmp_path)
    df.loc[0, "fold"] = (df.loc[0, "fold"] + 1) % 4
    df.to_csv(files[0], index=False)
    assert load_or_make_folds(ids, masks, 4, 0, tmp_path).loc[0, "fold"] == df.loc[0, "fold"]


def test_split_has_one_call_style(masks_ids):
    """(ids, masks) and keyword-only fold arguments: no positional or (data, cfg) form to mix up."""
    masks, ids = masks_ids
    tr, va = split(ids, masks, n_folds=5, fold=2)
    tr2, va2 = split(ids, masks, n_folds=5, fold=2, seed=0)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)
    with pytest.raises(TypeError):
        split(ids, masks, 5, 2)
    data = types.SimpleNamespace(ids=ids, masks=masks)
    with pytest.raises(TypeError):
        split(data, types.SimpleNamespace(data=types.SimpleNamespace(n_folds=5, fold=2, fold_seed=0)))
    with pytest.raises(ConfigError, match="data.fold"):
        split(ids, masks, n_folds=5, fold=5)


def test_unwritable_cache_still_splits_and_leaves_no_temp_file(masks_ids, tmp_path, monkeypatch):
    """A full disk while caching the folds: the split is still returned, no half-written file remains."""
    masks, ids = masks_ids

    def full(self, *a, **k):
        Path(a[0] if a else k["path_or_buf"]).write_text("id,cov")  # half-written, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    tr, va = split(ids, masks, n_folds=4, fold=1, seed=0, folds_dir=tmp_path)
    assert len(tr) + len(va) == len(ids)
    assert list(tmp_path.iterdir()) == []

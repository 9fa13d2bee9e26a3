"""RLE: Kaggle's column-major, 1-indexed format, strict decoding, and the real train.csv round trip."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from segnet import paths
from segnet.data.rle import rle_decode, rle_encode
from segnet.data.tgs import decode_mask
from segnet.errors import DataError


def test_column_major_one_indexed():
    m = np.zeros((101, 101), np.uint8)
    m[0, 0] = 1  # pixel 1
    m[1:3, 0] = 1  # pixels 2-3: merged with the first run
    m[0, 1] = 1  # first pixel of the second column: 102
    m[100, 100] = 1  # the last pixel
    assert rle_encode(m) == "1 3 102 1 10201 1"
    assert np.array_equal(rle_decode("1 3 102 1 10201 1"), m)


def test_empty_and_full():
    assert rle_encode(np.zeros((101, 101))) == ""
    assert rle_decode("").shape == (101, 101) and rle_decode("").sum() == 0
    assert rle_decode(None).sum() == 0
    assert rle_encode(np.ones((101, 101))) == "1 10201"
    assert rle_decode("1 10201").all()


def test_random_round_trip_and_channel_axis():
    rng = np.random.default_rng(0)
    for shape in [(101, 101), (7, 13)]:
        for p in (0.05, 0.5, 0.95):
            m = (rng.random(shape) < p).astype(np.uint8)
            r = rle_encode(m[..., None])
            d = rle_decode(r, shape)
            assert d.dtype == np.uint8 and np.array_equal(d, m)


def test_adjacent_runs_decode():
    assert np.array_equal(rle_decode("1 2 3 2"), rle_decode("1 4"))


@pytest.mark.parametrize(
    "bad, words",
    [
        ("1 2 3", "odd"),
        ("1 x", "non-integer"),
        ("1.5 2", "non-integer"),
        ("5 0", "length"),
        ("5 -2", "length"),
        ("0 3", "start"),
        ("10 5 12 3", "overlaps"),
        ("20 3 10 2", "overlaps"),
        ("10200 5", "past"),
        ("99999999999999999999 1", "too large"),  # past int64: no OverflowError traceback
        ("1 99999999999999999999", "too large"),
    ],
)
def test_malformed_rle_names_the_culprit(bad, words):
    with pytest.raises(DataError) as e:
        rle_decode(bad, where="train.csv id abc123")
    msg = str(e.value)
    assert "train.csv id abc123" in msg and words in msg and "\n" not in msg


def test_real_train_csv_round_trip():
    root = paths.real_tgs_dir()
    if root is None:
        pytest.skip("real TGS data not found ($TGS_DATA or ../shared/datasets/tgs-salt)")
    df = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    assert len(df) == 3500
    mismatched = []
    for i, rle in zip(df["id"], df["rle_mask"], strict=True):
        mask = decode_mask(root / "train" / "masks" / f"{i}.png")
        if rle_encode(mask) != rle or not np.array_equal(rle_decode(rle), mask):
            mismatched.append(i)
    assert not mismatched, f"{len(mismatched)} masks disagree with train.csv, e.g. {mismatched[:3]}"

"""Kaggle run-length encoding: column-major (Fortran) order, 1-indexed starts, "" for an empty mask.

Both directions are vectorised (no per-pixel Python). ``rle_decode`` is strict: anything that the
Kaggle encoder could not have produced (odd count, non-integers, zero or negative lengths, overlapping or
unsorted runs, runs past the image, huge values) raises :class:`~segnet.errors.DataError` naming the culprit.
"""

from __future__ import annotations

import re

import numpy as np

from segnet.errors import DataError

IMG_SHAPE = (101, 101)
_INT = re.compile(r"-?[0-9]+")


def rle_encode(mask: np.ndarray) -> str:
    """Encode a 2-D mask (any dtype; nonzero = salt; a trailing channel axis of 1 is allowed)."""
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.ndim != 2:
        raise ValueError(f"rle_encode expects a 2-D mask, got shape {m.shape}")
    flat = (m.reshape(-1, order="F") != 0).astype(np.int8)
    edges = np.diff(np.concatenate(([0], flat, [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    if starts.size == 0:
        return ""
    pairs = np.empty(2 * starts.size, dtype=np.int64)
    pairs[0::2] = starts + 1
    pairs[1::2] = ends - starts
    return " ".join(map(str, pairs.tolist()))


def _short(rle: str, limit: int = 40) -> str:
    return rle if len(rle) <= limit else rle[:limit] + "..."


def rle_decode(rle: str | None, shape: tuple[int, int] = IMG_SHAPE, *, where: str = "RLE") -> np.ndarray:
    """Decode a Kaggle RLE string to a uint8 {0,1} mask of ``shape``.

    ``where`` names the culprit in error messages (e.g. ``"train.csv id 575d24d81d"``).
    """
    if rle is None or (isinstance(rle, float) and np.isnan(rle)):
        rle = ""
    if not isinstance(rle, str):
        raise DataError(f"{where}: RLE must be a string, got {type(rle).__name__}")
    h, w = shape
    total = h * w
    tokens = rle.split()
    if not tokens:
        return np.zeros(shape, dtype=np.uint8)
    if len(tokens) % 2:
        raise DataError(f"{where}: malformed RLE, odd number of values ({len(tokens)}): '{_short(rle)}'")
    bad = next((t for t in tokens if not _INT.fullmatch(t)), None)
    if bad is not None:
        raise DataError(f"{where}: malformed RLE, non-integer value '{_short(bad, 12)}': '{_short(rle)}'")
    big = next((t for t in tokens if len(t.lstrip("-")) > 15), None)  # past any image, and past int64
    if big is not None:
        raise DataError(f"{where}: malformed RLE, value '{_short(big, 12)}' is too large: '{_short(rle)}'")
    values = np.array(tokens, dtype=np.int64)
    starts, lengths = values[0::2], values[1::2]
    if (starts < 1).any():
        raise DataError(f"{where}: malformed RLE, start {int(starts[starts < 1][0])} < 1 (starts are 1-indexed)")
    if (lengths < 1).any():
        raise DataError(f"{where}: malformed RLE, run length {int(lengths[lengths < 1][0])} <= 0")
    begin = starts - 1  # 0-indexed, inclusive
    end = begin + lengths  # exclusive
    if int(end.max()) > total:
        i = int(np.argmax(end > total))
        raise DataError(
            f"{where}: malformed RLE, run '{starts[i]} {lengths[i]}' goes past the {h}x{w} image ({total} pixels)"
        )
    if starts.size > 1 and (begin[1:] < end[:-1]).any():
        i = int(np.argmax(begin[1:] < end[:-1])) + 1
        raise DataError(f"{where}: malformed RLE, run starting at {starts[i]} overlaps or precedes the previous run")
    delta = np.zeros(total + 1, dtype=np.int32)
    delta[begin] += 1
    delta[end] -= 1
    flat = np.cumsum(delta[:-1], dtype=np.int32).astype(np.uint8)
    return flat.reshape(shape, order="F")

"""Cross-validation folds stratified by salt coverage class (``ceil(coverage * 10)``, 0..10).

Folds depend only on the ids, their masks, ``n_folds`` and the fold seed, never on the order the ids
come in. They are cached as CSV under ``paths.FOLDS_DIR`` so every run (and every ablation child) on the
same data sees the same split.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from segnet import paths
from segnet.atomic import atomic_write
from segnet.errors import ConfigError

COLUMNS = ["id", "coverage", "coverage_class", "fold"]


def coverage_of(masks: np.ndarray) -> np.ndarray:
    """Salt fraction per mask, (N,) float64 (empty for no masks)."""
    m = np.asarray(masks)
    if len(m) == 0:
        return np.zeros(0)
    return (m.reshape(len(m), -1) > 0).mean(axis=1)


def coverage_class(coverage: np.ndarray) -> np.ndarray:
    """``ceil(coverage * 10)``: 0 for an empty mask, 1..10 otherwise."""
    return np.ceil(np.round(np.asarray(coverage, np.float64) * 10, 9)).astype(int)


def make_folds(ids: Sequence[str], masks: np.ndarray, n_folds: int = 5, seed: int = 0) -> pd.DataFrame:
    """DataFrame(id, coverage, coverage_class, fold), rows in the order of ``ids``.

    Within each coverage class the ids are shuffled with ``seed`` and dealt round-robin, continuing
    across classes, so every fold gets its share of each class and fold sizes differ by at most one.
    """
    ids = [str(i) for i in ids]
    if len(ids) != len(masks):
        raise ValueError(f"{len(ids)} ids but {len(masks)} masks")
    if n_folds < 2:
        raise ConfigError(f"data.n_folds must be >= 2, got {n_folds}")
    if len(ids) < n_folds:
        raise ConfigError(f"data.n_folds={n_folds} is more than the {len(ids)} images")
    cov = coverage_of(masks)
    cls = coverage_class(cov)
    # Order independent of the input order: sort by id, then a seeded random key within each class.
    order_by_id = np.argsort(np.array(ids, dtype=object), kind="stable")
    key = np.empty(len(ids))
    key[order_by_id] = np.random.default_rng(seed).random(len(ids))
    dealt = np.lexsort((key, cls))  # by class, then random within class
    fold = np.empty(len(ids), dtype=int)
    fold[dealt] = np.arange(len(ids)) % n_folds
    return pd.DataFrame({"id": ids, "coverage": cov, "coverage_class": cls, "fold": fold})[COLUMNS]


def folds_key(ids: Sequence[str], masks: np.ndarray) -> str:
    """A short hash of what the folds depend on (the ids and each mask's coverage)."""
    h = hashlib.sha256()
    order = np.argsort(np.array(ids, dtype=object), kind="stable")
    cov = np.round(coverage_of(masks), 6)
    for k in order:
        h.update(f"{ids[k]}:{cov[k]:.6f}\n".encode())
    return h.hexdigest()[:12]


def folds_path(key: str, n: int, n_folds: int, seed: int, folds_dir: str | Path | None = None) -> Path:
    folder = Path(folds_dir) if folds_dir is not None else paths.FOLDS_DIR
    return folder / f"{key}_{n}_{n_folds}f_{seed}.csv"


def load_or_make_folds(
    ids: Sequence[str],
    masks: np.ndarray,
    n_folds: int = 5,
    seed: int = 0,
    folds_dir: str | Path | None = None,
) -> pd.DataFrame:
    """``make_folds``, cached as CSV (``FOLDS_DIR/<key>_<n>_<k>f_<seed>.csv``); rows in the order of ``ids``."""
    ids = [str(i) for i in ids]
    path = folds_path(folds_key(ids, masks), len(ids), n_folds, seed, folds_dir)
    if path.is_file():
        try:
            df = pd.read_csv(path, dtype={"id": str})
            if list(df.columns) == COLUMNS and set(df["id"]) == set(ids) and len(df) == len(ids):
                return df.set_index("id").loc[ids].reset_index()[COLUMNS]
        except (OSError, ValueError, KeyError, pd.errors.ParserError):
            pass  # unreadable or stale: rebuild below
    df = make_folds(ids, masks, n_folds=n_folds, seed=seed)
    # A read-only checkout or a full disk still trains (no half-written file either): the folds are
    # recomputed identically next time.
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: df.to_csv(tmp, index=False, float_format="%.6f"))
    return df


def split_indices(folds: pd.DataFrame, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx) into the rows of ``folds``: validation = rows whose fold is ``fold``."""
    n_folds = int(folds["fold"].max()) + 1
    if not 0 <= fold < n_folds:
        raise ConfigError(f"data.fold={fold} is outside 0..{n_folds - 1} (data.n_folds={n_folds})")
    is_val = folds["fold"].to_numpy() == fold
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def split(
    ids: Sequence[str],
    masks: np.ndarray,
    *,
    n_folds: int,
    fold: int,
    seed: int = 0,
    folds_dir: str | Path | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx) into ``ids``/``masks``: fold ``fold`` of ``n_folds`` (cached, reproducible).

    From a config: ``split(data.ids, data.masks, n_folds=cfg.data.n_folds, fold=cfg.data.fold,
    seed=cfg.data.fold_seed)``. The fold seed is deliberately not ``train.seed``: runs with different
    training seeds share a split.
    """
    if not 0 <= fold < n_folds:
        raise ConfigError(f"data.fold={fold} is outside 0..{n_folds - 1} (data.n_folds={n_folds})")
    return split_indices(load_or_make_folds(ids, masks, n_folds, seed, folds_dir), fold)

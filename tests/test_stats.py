"""The hierarchical paired bootstrap (segnet.stats) on per-image score tables with known answers."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from segnet.stats import IMAGES, IMAGES_TRAINING, bootstrap, scores_table, verdict_sentence

IDS = [f"img{i:04d}" for i in range(300)]


def _series(values) -> pd.Series:
    return pd.Series(np.asarray(values, float), index=IDS[: len(values)])


def _row(result, variant: str) -> pd.Series:
    return result.table.set_index("variant").loc[variant]


def _base(seed: int = 0, n: int = 300) -> np.ndarray:
    """Per-image difficulty: the score every model gets on an image, give or take."""
    return np.random.default_rng(seed).uniform(0.2, 0.9, n)


def test_seeds_that_disagree_widen_the_interval_past_zero():
    """B's two seeds land far apart (+0.12 and -0.08 on every image), around a mean 0.02 above A's.
    Averaging the seeds first, every image says +0.02: the image-only interval excludes 0. Resampling
    the seeds too shows the difference one more seed could reverse: the interval includes 0."""
    base = _base()
    noise = np.random.default_rng(1).normal(0, 0.01, (4, base.size))
    table = scores_table({"A": [_series(base + noise[0]), _series(base + noise[1])],
                          "B": [_series(base + 0.12 + noise[2]), _series(base - 0.08 + noise[3])]})
    hier, flat = bootstrap(table, n=2000), bootstrap(table, n=2000, training=False)
    h, f = _row(hier, "B"), _row(flat, "B")
    assert h.diff_mean == pytest.approx(0.02, abs=0.005) and f.diff_mean == pytest.approx(h.diff_mean)
    assert f.diff_lo > 0 and f.significant and f.interval == IMAGES
    assert h.diff_lo < 0 < h.diff_hi and not h.significant and h.interval == IMAGES_TRAINING
    assert h.diff_lo < -0.05 and h.diff_hi > 0.09  # it reaches both seeds' own differences
    assert h.replicates == 2 and h.final_std == pytest.approx(np.sqrt(0.02), abs=0.01)  # std of +0.12, -0.08


def test_better_on_every_image_in_every_seed_is_significant_and_best():
    base = _base(2)
    rng = np.random.default_rng(3)
    reps = {"ref": [_series(base + rng.normal(0, 0.02, base.size)) for _ in range(3)],
            "worse": [_series(base - 0.05 + rng.normal(0, 0.02, base.size)) for _ in range(3)]}
    reps["better"] = [_series(np.max([r.to_numpy() for r in reps["ref"]], axis=0) + 0.03 + 0.01 * k)
                      for k in range(3)]  # above every reference seed on every image
    r = bootstrap(scores_table(reps), n=2000)
    better = _row(r, "better")
    assert better.diff_lo > 0 and better.significant and better.interval == IMAGES_TRAINING
    assert better.p_best > 0.99 and r.table.p_best.sum() == pytest.approx(1.0)
    worse = _row(r, "worse")
    assert worse.diff_hi < 0 and worse.significant and worse.p_best == 0.0
    lead = r.lead()
    assert lead["best"] == lead["winner"] == "better" and lead["runner_up"] == "ref" and lead["lead_lo"] > 0
    assert verdict_sentence(lead).startswith("best variant: better, its lead over every other variant survives")
    ref = _row(r, "ref")
    assert (ref.diff_mean, ref.diff_lo, ref.diff_hi, ref.significant) == (0.0, 0.0, 0.0, False)


def test_no_winner_when_the_lead_is_within_the_noise():
    base = _base(4)
    rng = np.random.default_rng(5)
    reps = {v: [_series(base + rng.normal(0, 0.1, base.size)) for _ in range(2)] for v in ("a", "b", "c")}
    lead = bootstrap(scores_table(reps), n=1000).lead()
    assert lead["winner"] is None and lead["lead_lo"] < 0
    assert verdict_sentence(lead).startswith("no variant is distinguishable")


@pytest.mark.parametrize("table_seed", range(6))
def test_hierarchical_interval_is_never_narrower_than_the_image_only_one(table_seed):
    rng = np.random.default_rng(100 + table_seed)
    n_img, n_seeds = int(rng.integers(50, 300)), int(rng.integers(2, 5))
    base = rng.uniform(0, 1, n_img)
    reps = {v: [_series(np.clip(base + rng.normal(rng.normal(0, 0.05), rng.uniform(0.01, 0.2), n_img), 0, 1))
                for _ in range(n_seeds)] for v in ("a", "b", "c")}
    table = scores_table(reps)
    hier, flat = bootstrap(table, n=1000, seed=table_seed), bootstrap(table, n=1000, seed=table_seed, training=False)
    for v in ("b", "c"):
        h, f = _row(hier, v), _row(flat, v)
        assert h.diff_mean == pytest.approx(f.diff_mean)  # the same point estimate
        assert h.diff_hi - h.diff_lo >= f.diff_hi - f.diff_lo


def test_single_replicate_is_the_classic_paired_bootstrap_of_images():
    """One replicate each: ``interval`` is ``images`` and the numbers are exactly the paired bootstrap of
    the per-image differences (the statistic `segnet compare` and one-seed ablations always reported)."""
    base = _base(6)
    rng = np.random.default_rng(7)
    a, b = _series(base + rng.normal(0, 0.1, base.size)), _series(base + 0.02 + rng.normal(0, 0.1, base.size))
    r = bootstrap(scores_table({"a": [a], "b": [b]}), n=2000)
    row = _row(r, "b")
    assert set(r.table.interval) == {IMAGES} and row.replicates == 1 and row.final_std == 0.0
    np.testing.assert_allclose([row.diff_mean, row.diff_lo, row.diff_hi],
                               paired_bootstrap((b - a).to_numpy(), 2000), atol=1e-12)
    # the same pair inside a bigger table (a third variant, with seeds) keeps its interval
    c = [_series(base + rng.normal(0, 0.1, base.size)) for _ in range(3)]
    r3 = bootstrap(scores_table({"a": [a], "b": [b], "c": c}), n=2000)
    np.testing.assert_allclose(_row(r3, "b")[["diff_lo", "diff_hi"]].to_numpy(float),
                               row[["diff_lo", "diff_hi"]].to_numpy(float))
    assert _row(r3, "b").interval == IMAGES and _row(r3, "c").interval == IMAGES_TRAINING


def test_folds_pair_images_by_id_and_resample_seeds_within_a_fold():
    """Replicates of different folds score different images: each image is scored by its fold's
    replicates, images are paired across variants by id whatever the order, and every image is used once."""
    base = _base(8)
    rng = np.random.default_rng(9)
    folds = [IDS[0:100], IDS[100:200], IDS[200:300]]
    reps, fold_of = {"a": [], "b": []}, {"a": [], "b": []}
    for v, shift in (("a", 0.0), ("b", 0.05)):
        for k, ids in enumerate(folds):
            for _ in range(2):  # two seeds per fold
                s = pd.Series(base[[IDS.index(i) for i in ids]] + shift + rng.normal(0, 0.01, len(ids)), index=ids)
                reps[v].append(s.sample(frac=1.0, random_state=int(rng.integers(1000))))  # any order
                fold_of[v].append(k)
    r = bootstrap(scores_table(reps, fold_of), n=1000)
    b = _row(r, "b")
    assert r.n_images == 300 and b.replicates == 6 and b.interval == IMAGES_TRAINING
    assert b.diff_mean == pytest.approx(0.05, abs=0.003) and b.significant
    with pytest.raises(ValueError, match="scored in two folds"):
        bootstrap(scores_table({"a": [_series(base)] * 2, "b": [_series(base)]}, {"a": [0, 1], "b": [0]}))


def test_only_images_every_variant_scored_are_compared():
    base = _base(10)
    a, b = _series(base), _series(base + 0.1).iloc[:200]
    r = bootstrap(scores_table({"a": [a], "b": [b]}), n=200)
    assert r.n_images == 200 and _row(r, "b").diff_mean == pytest.approx(0.1)
    assert _row(r, "a").final_mean == pytest.approx(base.mean())  # a replicate's own score: all its images
    with pytest.raises(ValueError, match="no image"):
        bootstrap(scores_table({"a": [a.iloc[:10]], "b": [_series(base).iloc[10:20]]}))


def test_deterministic_and_fast_enough():
    """8 variants x 3 seeds x 700 images x 2000 draws: the size of a real ablation, well under seconds."""
    rng = np.random.default_rng(11)
    ids = [f"i{k}" for k in range(700)]
    reps = {f"v{k}": [pd.Series(rng.uniform(0, 1, 700), index=ids) for _ in range(3)] for k in range(8)}
    table = scores_table(reps)
    t0 = time.perf_counter()
    r1 = bootstrap(table, n=2000, seed=3)
    elapsed = time.perf_counter() - t0
    r2 = bootstrap(table, n=2000, seed=3)
    pd.testing.assert_frame_equal(r1.table, r2.table)
    assert elapsed < 5.0, elapsed


def paired_bootstrap(diff: np.ndarray, n: int, seed: int = 0) -> tuple[float, float, float]:
    """The classic image-only paired bootstrap that one-seed ablations and `compare` reported before the
    hierarchical one: the oracle a single replicate must reproduce exactly."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(n, len(diff)))
    means = diff[idx].mean(axis=1)
    return float(diff.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def test_paired_bootstrap_known_answers():
    mean, lo, hi = paired_bootstrap(np.full(50, 0.1), 500)
    assert mean == pytest.approx(0.1) and lo == pytest.approx(0.1) and hi == pytest.approx(0.1)
    noise = np.random.default_rng(1).normal(0.0, 0.3, 400)
    _, lo, hi = paired_bootstrap(noise - noise.mean(), 2000)
    assert lo < 0 < hi
    _, lo, hi = paired_bootstrap(noise - noise.mean() + 0.2, 2000)
    assert lo > 0

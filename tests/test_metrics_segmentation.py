"""segnet.metrics.segmentation against a plain per-image reference and hand-made cases."""

from __future__ import annotations

import time

import numpy as np
import pytest

from segnet.metrics.segmentation import (
    GAP_PARTS,
    dice,
    dice_scores,
    iou,
    iou_scores,
    pixel_iou,
    score_gaps,
    score_table,
    search_threshold,
    sigmoid,
    tgs_map,
    tgs_scores,
)

# ------------------------------------------------------------------ plain reference (loops, Fractions)


def ref_iou(t: np.ndarray, p: np.ndarray) -> float:
    t, p = t.astype(bool), p.astype(bool)
    union = int((t | p).sum())
    return 1.0 if union == 0 else int((t & p).sum()) / union


def ref_tgs(t: np.ndarray, p: np.ndarray) -> float:
    t, p = t.astype(bool), p.astype(bool)
    if not t.any():
        return 1.0 if not p.any() else 0.0
    if not p.any():
        return 0.0
    inter, union = int((t & p).sum()), int((t | p).sum())
    # exact: IoU > k/20  <=>  20*inter > k*union
    return sum(1 for k in range(10, 20) if 20 * inter > k * union) / 10


def ref_dice(t: np.ndarray, p: np.ndarray) -> float:
    t, p = t.astype(bool), p.astype(bool)
    tot = int(t.sum() + p.sum())
    return 1.0 if tot == 0 else 2 * int((t & p).sum()) / tot


def random_masks(rng: np.random.Generator, n: int, size: int = 101):
    """Blobby random masks with a mix of empty, small and large; predictions are perturbed truths."""
    truth = np.zeros((n, size, size), bool)
    pred = np.zeros((n, size, size), bool)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        kind = i % 5
        if kind != 0:  # non-empty truth
            cy, cx, r = rng.uniform(0, size, 2).tolist() + [rng.uniform(3, size / 2)]
            truth[i] = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        if kind in (0, 1, 2, 3) and rng.random() < 0.8:
            noise = rng.random((size, size)) < rng.uniform(0, 0.3)
            cy, cx, r = rng.uniform(0, size, 2).tolist() + [rng.uniform(3, size / 2)]
            pred[i] = (truth[i] ^ noise) if kind else ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2)
    return truth, pred


# -------------------------------------------------------------------------------------- hand-made


def test_all_empty_scores_one():
    z = np.zeros((3, 10, 10), bool)
    assert np.all(tgs_scores(z, z) == 1.0)
    assert tgs_map(z, z) == 1.0
    assert iou(z, z) == 1.0 and dice(z, z) == 1.0 and pixel_iou(z, z) == 1.0


def test_perfect_prediction():
    t = np.zeros((2, 8, 8), bool)
    t[:, 2:6, 1:7] = True
    assert np.all(tgs_scores(t, t) == 1.0)
    assert iou(t, t) == 1.0 and dice(t, t) == 1.0 and pixel_iou(t, t) == 1.0


def test_empty_prediction_on_salt_and_salt_on_empty():
    t = np.zeros((2, 8, 8), bool)
    p = np.zeros((2, 8, 8), bool)
    t[0, 1:3, 1:3] = True  # salt, nothing predicted
    p[1, 4:6, 4:6] = True  # nothing there, salt predicted
    np.testing.assert_array_equal(tgs_scores(t, p), [0.0, 0.0])
    np.testing.assert_array_equal(iou_scores(t, p), [0.0, 0.0])
    np.testing.assert_array_equal(dice_scores(t, p), [0.0, 0.0])
    assert pixel_iou(t, p) == 0.0


@pytest.mark.parametrize(
    "inter,union,expected",
    [
        (50, 100, 0.0),  # IoU exactly 0.50: not > 0.50
        (51, 100, 0.1),  # just above 0.50
        (55, 100, 0.1),  # exactly 0.55: counts for 0.50 only
        (56, 100, 0.2),
        (95, 100, 0.9),  # exactly 0.95: not > 0.95
        (96, 100, 1.0),
        (100, 100, 1.0),
        (49, 100, 0.0),
        (7, 10, 0.4),  # exactly 0.70 -> counts for 0.50, 0.55, 0.60, 0.65
        (3, 4, 0.5),  # exactly 0.75 -> 0.50..0.70
    ],
)
def test_iou_exactly_at_thresholds(inter, union, expected):
    # truth = first `union` pixels, prediction = first `inter` of them: IoU = inter/union exactly
    t = np.zeros((1, 20, 20), bool)
    p = np.zeros((1, 20, 20), bool)
    t.reshape(-1)[:union] = True
    p.reshape(-1)[:inter] = True
    assert tgs_scores(t, p)[0] == pytest.approx(expected, abs=1e-12)
    assert iou_scores(t, p)[0] == pytest.approx(inter / union)


def test_accepts_channel_axis_and_numeric_inputs():
    rng = np.random.default_rng(0)
    t, p = random_masks(rng, 10, 16)
    a = tgs_scores(t, p)
    b = tgs_scores(t[..., None].astype(np.float32), p[..., None].astype(np.uint8))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError):
        tgs_scores(t, p[:, :8])


def test_dice_and_pixel_iou_known_values():
    t = np.zeros((2, 4, 4), bool)
    p = np.zeros((2, 4, 4), bool)
    t[0, :2] = True  # 8 px
    p[0, :1] = True  # 4 px inside
    t[1, 0, 0] = True
    p[1, 0, 0] = True
    np.testing.assert_allclose(dice_scores(t, p), [2 * 4 / 12, 1.0])
    assert pixel_iou(t, p) == pytest.approx((4 + 1) / (8 + 1))


# ------------------------------------------------------------------------------ against reference


def test_matches_reference_on_random_masks():
    rng = np.random.default_rng(1234)
    t, p = random_masks(rng, 60)
    want_tgs = np.array([ref_tgs(a, b) for a, b in zip(t, p, strict=True)])
    want_iou = np.array([ref_iou(a, b) for a, b in zip(t, p, strict=True)])
    want_dice = np.array([ref_dice(a, b) for a, b in zip(t, p, strict=True)])
    np.testing.assert_allclose(tgs_scores(t, p), want_tgs, atol=1e-12)
    np.testing.assert_allclose(iou_scores(t, p), want_iou, atol=1e-12)
    np.testing.assert_allclose(dice_scores(t, p), want_dice, atol=1e-12)
    assert tgs_map(t, p) == pytest.approx(want_tgs.mean())
    assert len(set(np.round(want_tgs, 3))) > 3  # the sample covers a spread of scores


def test_search_threshold_matches_brute_force():
    rng = np.random.default_rng(7)
    t, _ = random_masks(rng, 40, 32)
    probs = np.clip(t * 0.6 + rng.normal(0.2, 0.25, t.shape), 0, 1)
    ths = np.linspace(0.2, 0.8, 13)
    best_t, best_map, table = search_threshold(t, probs, ths)
    maps = np.array([np.mean([ref_tgs(a, b > th) for a, b in zip(t, probs, strict=True)]) for th in ths])
    ious = np.array([np.mean([ref_iou(a, b > th) for a, b in zip(t, probs, strict=True)]) for th in ths])
    np.testing.assert_allclose(table["tgs_map"].to_numpy(), maps, atol=1e-12)
    np.testing.assert_allclose(table["iou"].to_numpy(), ious, atol=1e-12)
    assert list(table.columns) == ["threshold", "tgs_map", "iou"]
    assert best_map == pytest.approx(maps.max())
    assert best_t == pytest.approx(ths[np.argmax(maps)])


def test_search_threshold_unsorted_and_exact_boundaries():
    # a pixel at exactly the threshold is not salt (prob > t)
    t = np.zeros((1, 4, 4), bool)
    t[0, :2] = True
    probs = np.where(t, 0.5, 0.1)
    ths = [0.6, 0.5, 0.4]
    _, _, table = search_threshold(t, probs, ths)
    np.testing.assert_allclose(table["tgs_map"], [0.0, 0.0, 1.0])
    best_t, best_map, _ = search_threshold(t, probs, ths)
    assert (best_t, best_map) == (0.4, 1.0)


def test_search_threshold_is_fast():
    rng = np.random.default_rng(3)
    t = rng.random((700, 101, 101)) < 0.3
    probs = rng.random((700, 101, 101)).astype(np.float32)
    search_threshold(t[:5], probs[:5])  # warm-up
    start = time.perf_counter()
    _, _, table = search_threshold(t, probs)
    assert len(table) == 25
    assert time.perf_counter() - start < 3.0


def test_score_table():
    t = np.zeros((2, 4, 4), bool)
    t[0, 0, 0] = True
    p = np.zeros_like(t)
    p[0, :2, :2] = True
    df = score_table(["a", "b"], t, p)
    assert list(df.columns) == ["id", "iou", "tgs", "coverage", "pred_coverage"]
    assert df["id"].tolist() == ["a", "b"]
    np.testing.assert_array_equal(df["tgs"], [0.0, 1.0])
    np.testing.assert_array_equal(df["iou"], [0.25, 1.0])
    np.testing.assert_array_equal(df["coverage"], [1 / 16, 0.0])
    np.testing.assert_array_equal(df["pred_coverage"], [4 / 16, 0.0])
    with pytest.raises(ValueError):
        score_table(["a"], t, t)
    none = score_table([], t[:0], t[:0])  # no images: an empty table, no error
    assert len(none) == 0 and list(none.columns) == list(df.columns)


def test_sigmoid_is_finite_and_silent_for_extreme_logits():
    # a trained net's logits reach +-1e3 (np.exp overflowed there with a RuntimeWarning)
    z = np.array([-1e4, -1e3, -30.0, -1.0, 0.0, 1.0, 30.0, 1e3, 1e4], dtype=np.float32)
    with np.errstate(all="raise"):
        p = sigmoid(z)
    ref = 1.0 / (1.0 + np.exp(-z[2:7].astype(np.float64)))
    np.testing.assert_allclose(p[2:7], ref, atol=1e-6)
    assert p[0] == 0.0 and p[1] == 0.0 and p[-1] == 1.0 and p[-2] == 1.0


def _gap_case():
    """Ten 10x10 images whose every loss is known: (truth, prediction) pairs built pixel by pixel."""
    t = np.zeros((10, 10, 10), bool)
    p = np.zeros_like(t)
    # 0, 1: no salt, predicted empty (score 1 each)
    t[2, 0, 0] = False
    p[2, 5, 5] = True  # 2: no salt, one salt pixel predicted: an empty-image false positive (costs 1)
    p[3, 0, :3] = True  # 3: same, three pixels (costs 1)
    t[4, :2, :3] = True  # 4: 6% salt predicted empty: a false empty (costs 1)
    t[5, :2, :4] = True
    p[5, :2, :4] = True  # 5: 8% salt, exact (score 1)
    t[6, :2, :4] = True
    p[6, :2, :3] = True  # 6: 8% salt, 6 of 8 pixels: IoU 0.75, score 0.5 (small: costs 0.5)
    t[7, :3, :] = True
    p[7, :2, :] = True  # 7: 30% salt, IoU 20/30 = 0.667, score 0.4 (medium: costs 0.6)
    t[8, :6, :] = True
    p[8, :6, :9] = True  # 8: 60% salt, IoU 54/60 = 0.9, score 0.8 (large: costs 0.2)
    t[9, 5:, :] = True
    p[9, :5, :] = True  # 9: 50% salt (medium), a mask in the wrong place: IoU 0, score 0 (medium: costs 1)
    return t, p


def test_score_gaps_add_up_to_what_each_kind_of_error_costs():
    t, p = _gap_case()
    df = score_table([str(i) for i in range(10)], t, p)
    np.testing.assert_allclose(df["tgs"], [1, 1, 0, 0, 0, 1, 0.5, 0.4, 0.8, 0])
    gaps = score_gaps(df)
    assert gaps == pytest.approx({
        "gap_empty_fp": 2 / 10, "gap_empty_fn": 1 / 10, "gap_small": 0.5 / 10, "gap_medium": 1.6 / 10,
        "gap_large": 0.2 / 10, "empty_fp_rate": 2 / 4, "empty_fn_rate": 1 / 6,
    })
    assert list(GAP_PARTS) == [k for k in gaps if k.startswith("gap_")]
    assert tgs_map(t, p) + sum(gaps[k] for k in GAP_PARTS) == pytest.approx(1.0)


def test_score_gaps_of_a_perfect_model_and_of_no_empty_images():
    t, _ = _gap_case()
    gaps = score_gaps(score_table([str(i) for i in range(10)], t, t))
    assert all(gaps[k] == 0 for k in GAP_PARTS) and gaps["empty_fp_rate"] == 0 and gaps["empty_fn_rate"] == 0
    salt = score_gaps(score_table(["a"], t[5:6], t[5:6]))
    assert np.isnan(salt["empty_fp_rate"]) and salt["empty_fn_rate"] == 0


def test_score_gaps_hold_on_random_predictions():
    rng = np.random.default_rng(3)
    t = rng.random((200, 16, 16)) < rng.random((200, 1, 1)) ** 3
    t[:60] = False
    p = rng.random((200, 16, 16)) < 0.5 * t + rng.random((200, 1, 1)) * 0.2
    p[rng.random(200) < 0.3] = False
    df = score_table([str(i) for i in range(200)], t, p)
    gaps = score_gaps(df)
    assert all(gaps[k] >= 0 for k in GAP_PARTS)
    assert df["tgs"].mean() + sum(gaps[k] for k in GAP_PARTS) == pytest.approx(1.0)

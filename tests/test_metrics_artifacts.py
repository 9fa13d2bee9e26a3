"""segnet.metrics.artifacts: known answers for the checkerboard metrics."""

from __future__ import annotations

import numpy as np
import pytest

from segnet.metrics.artifacts import (
    artifact_const_response,
    artifact_excess,
    artifact_overlap_unevenness,
    artifact_periodic_energy,
    artifact_periodic_energy_gt,
    crop_to_multiple,
    overlap_counts,
    periodic_energy_scores,
)


def checkerboard(n: int) -> np.ndarray:
    y, x = np.mgrid[:n, :n]
    return ((-1.0) ** (x + y)).astype(np.float32)


def disc(n: int, r: float | None = None, smooth: float = 3.0) -> np.ndarray:
    y, x = np.mgrid[:n, :n]
    d = np.hypot(y - n / 2 + 0.5, x - n / 2 + 0.5)
    return np.tanh(((r or n / 4) - d) / smooth)  # smooth signed "logit" disc


# ------------------------------------------------------------------------------- periodic energy


def test_checkerboard_scores_one():
    z = np.stack([checkerboard(64), 3 * checkerboard(64) + 1])
    assert artifact_periodic_energy(z) == pytest.approx(1.0, abs=1e-9)
    assert artifact_periodic_energy(z[..., None]) == pytest.approx(1.0, abs=1e-9)


def test_stride4_pattern_scores_one():
    y, x = np.mgrid[:32, :32]
    z = np.cos(2 * np.pi * x / 4) + ((y % 4) == 0)  # period-4 and period-2 patterns only
    assert artifact_periodic_energy(z[None]) == pytest.approx(1.0, abs=1e-9)


def test_smooth_disc_scores_near_zero():
    assert artifact_periodic_energy(disc(64)[None]) < 0.05
    assert artifact_periodic_energy(np.stack([disc(101, r=30), disc(101, r=20)])) < 0.05
    # hard-edged (binary) disc logits are still far from a checkerboard
    assert artifact_periodic_energy(np.where(disc(100) > 0, 4.0, -4.0)[None]) < 0.1


def test_disc_plus_checkerboard_in_between():
    z = disc(64) + 0.3 * checkerboard(64)
    s = artifact_periodic_energy(z[None])
    assert 0.05 < s < 1.0


def test_crop_101_to_100_and_odd_sizes():
    z = np.zeros((2, 101, 101, 1))
    assert crop_to_multiple(z).shape == (2, 100, 100)
    assert crop_to_multiple(np.zeros((1, 103, 98))).shape == (1, 100, 96)
    # a checkerboard on 101x101 is still a checkerboard after the crop
    assert artifact_periodic_energy(checkerboard(101)[None]) == pytest.approx(1.0, abs=1e-9)


def test_constant_maps_are_skipped():
    z = np.stack([np.full((16, 16), 2.5), checkerboard(16)])
    s = periodic_energy_scores(z)
    assert np.isnan(s[0]) and s[1] == pytest.approx(1.0)
    assert artifact_periodic_energy(z) == pytest.approx(1.0)
    assert artifact_periodic_energy(np.ones((3, 8, 8))) == 0.0


def test_gt_version_and_excess():
    masks = np.zeros((3, 64, 64), np.float32)
    masks[1] = disc(64) > 0
    masks[2, 10:40, 5:50] = 1
    gt = artifact_periodic_energy_gt(masks)  # the empty mask is skipped
    assert 0.0 < gt < 0.2
    assert gt == pytest.approx(artifact_periodic_energy(2 * masks[1:] - 1))
    assert artifact_excess(0.4, 0.2) == pytest.approx(2.0)
    assert np.isnan(artifact_excess(0.4, 0.0))


# ----------------------------------------------------------------------------- overlap unevenness


@pytest.mark.parametrize(
    "k,s,expected",
    [(3, 2, 0.75), (4, 2, 0.0), (2, 2, 0.0), (1, 2, 1.0), (5, 2, 1 - 4 / 9), (3, 1, 0.0), (3, 3, 0.0)],
)
def test_overlap_unevenness(k, s, expected):
    assert artifact_overlap_unevenness(k, s) == pytest.approx(expected)


def test_overlap_counts_match_a_real_scatter():
    # brute force: scatter a kernel of ones at stride s over a long input, count taps per output
    for k, s in [(3, 2), (4, 2), (5, 3), (2, 3)]:
        out = np.zeros(10 * s + k)
        for i in range(10):
            out[i * s : i * s + k] += 1
        period = out[4 * s : 5 * s]  # one period starting at a multiple of s, away from the borders
        np.testing.assert_array_equal(overlap_counts((k, 1), (s, 1))[:, 0], period)
    assert overlap_counts((3, 4), 2).tolist() == [[4, 4], [2, 2]]


# ---------------------------------------------------------------------------- constant response


def _tiny_model(kind: str):
    import keras

    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="stem")(inp)
    for stage in (1, 2):
        if kind == "transposed":
            up = keras.layers.Conv2DTranspose(
                4, 3, strides=2, padding="same", name=f"decoder{stage}_up", bias_initializer="zeros"
            )
        elif kind == "nearest":
            up = keras.Sequential(
                [keras.layers.UpSampling2D(2), keras.layers.Conv2D(4, 3, padding="same")],
                name=f"decoder{stage}_up",
            )
        else:  # bilinear resize-convolution is flat on a constant interior too
            up = keras.Sequential(
                [
                    keras.layers.UpSampling2D(2, interpolation="bilinear"),
                    keras.layers.Conv2D(4, 3, padding="same"),
                ],
                name=f"decoder{stage}_up",
            )
        x = up(x)
    return keras.Model(inp, keras.layers.Conv2D(1, 1)(x))


def test_const_response_transposed_k3_is_nonzero():
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    r = artifact_const_response(_tiny_model("transposed"), needs_indices=False, return_maps=True)
    assert len(r["per_stage"]) == 2
    assert r["max"] == max(r["per_stage"]) and r["max"] > 0.05
    assert r["maps"][0].shape == (32, 32, 4)


@pytest.mark.parametrize("kind", ["nearest", "bilinear"])
def test_const_response_resize_conv_is_zero(kind):
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    r = artifact_const_response(_tiny_model(kind), needs_indices=False)
    assert len(r["per_stage"]) == 2
    assert r["max"] <= 1e-6


def test_const_response_with_indices_unpooling():
    """A SegNet-style unpooling layer fed with indices from pooling a constant map."""
    keras = pytest.importorskip("keras")
    tf = pytest.importorskip("tensorflow")

    class Unpool(keras.layers.Layer):
        def call(self, inputs):
            x, idx = inputs
            b, h, w, c = tf.unstack(tf.shape(x))
            flat = tf.scatter_nd(
                tf.reshape(tf.cast(idx, tf.int32), (-1, 1)), tf.reshape(x, (-1,)), [b * 4 * h * w * c]
            )
            return tf.reshape(flat, (b, 2 * h, 2 * w, c))

    inp = keras.Input((8, 8, 2))
    pooled = keras.layers.MaxPooling2D()(inp)
    idx = keras.Input((4, 4, 2), dtype="int64")
    out = Unpool(name="decoder1_up")([pooled, idx])
    model = keras.Model([inp, idx], out)
    r = artifact_const_response(model, needs_indices=True)
    assert len(r["per_stage"]) == 1
    # a constant map unpooled at fixed positions is a bed of nails: std/mean = sqrt(3)
    assert r["max"] == pytest.approx(np.sqrt(3.0), rel=1e-6)


def test_const_response_no_stages():
    keras = pytest.importorskip("keras")
    inp = keras.Input((8, 8, 1))
    model = keras.Model(inp, keras.layers.Conv2D(1, 1)(inp))
    assert artifact_const_response(model, needs_indices=False) == {"per_stage": [], "max": 0.0}


# ------------------------------------------------------------------ the registry's real decoders

# (decoder, options, checkerboard-free by construction at initialisation?)
REGISTRY_CASES = [
    ("transposed", {"kernel_size": 3}, False),
    ("transposed", {"kernel_size": 4}, False),  # even overlap, but random sub-kernels differ
    ("upsampling", {"interpolation": "nearest"}, True),
    ("upsampling", {"interpolation": "bilinear"}, True),
    ("maxunpool", {}, False),
    ("bed_of_nails", {}, False),
    ("pixel_shuffle", {"icnr": True}, True),
    ("pixel_shuffle", {"icnr": False}, False),
    ("bilinear_additive", {}, True),
]


def test_registry_cases_cover_every_decoder():
    models = pytest.importorskip("segnet.models")
    assert {name for name, _, _ in REGISTRY_CASES} == set(models.DECODERS)


@pytest.mark.parametrize("name,options,flat", REGISTRY_CASES, ids=lambda v: str(v))
def test_const_response_of_registry_decoders(name, options, flat):
    from types import SimpleNamespace as NS

    keras = pytest.importorskip("keras")
    models = pytest.importorskip("segnet.models")
    keras.utils.set_random_seed(0)
    cfg = NS(
        data=NS(size=32),
        model=NS(decoder=name, depth=2, filters=4, residual=False, dropout=0.0),
        decoder=options,
    )
    model = models.build_model(cfg)
    r = artifact_const_response(model, needs_indices=models.DECODERS[name].needs_indices, return_maps=True)
    assert len(r["per_stage"]) == 2
    assert all(m.shape[:2] == (32, 32) for m in r["maps"])
    if flat:
        assert r["max"] <= 1e-6
    else:
        assert min(r["per_stage"]) > 0.1
    if name == "maxunpool":  # a constant map unpooled to one position per 2x2 cell: std/mean = sqrt(3)
        assert r["per_stage"] == pytest.approx([np.sqrt(3.0)] * 2, rel=1e-5)

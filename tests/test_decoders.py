"""Every registered decoder: builds at odd and even sizes, trains (gradients), saves and reloads;
the custom operators do exactly what they claim; the registry validates names and options."""

from __future__ import annotations

from types import SimpleNamespace as NS

import keras
import numpy as np
import pytest
import tensorflow as tf

from segnet.errors import ConfigError
from segnet.models import DECODERS, build_model, resolve_decoder
from segnet.models import layers as L  # noqa: N812

NAMES = sorted(DECODERS)
EXPECTED = {"transposed", "upsampling", "maxunpool", "bed_of_nails", "pixel_shuffle", "bilinear_additive"}


def _cfg(decoder, size=64, depth=4, filters=4, options=None, residual=False):
    return NS(
        data=NS(size=size),
        model=NS(decoder=decoder, depth=depth, filters=filters, residual=residual, dropout=0.0),
        decoder=dict(options or {}),
    )


def _images(n, size, seed=0):
    return np.random.default_rng(seed).random((n, size, size, 1), dtype=np.float32)


def test_registry_holds_every_decoder():
    assert set(DECODERS) == EXPECTED
    for name, spec in DECODERS.items():
        assert spec.name == name
        assert spec.description and "\n" not in spec.description
        for key, opt in spec.options.items():
            assert opt.choices is not None or opt.type is not None, key
            assert resolve_decoder(name, {key: opt.default})[1][key] == opt.default
    assert DECODERS["maxunpool"].needs_indices and not DECODERS["maxunpool"].supports_jit
    assert not any(DECODERS[n].needs_indices for n in EXPECTED - {"maxunpool"})


# ----------------------------------------------------------------------------- every decoder


@pytest.mark.parametrize("size", [64, 101, 128])
@pytest.mark.parametrize("name", NAMES)
def test_builds_and_keeps_the_input_shape(name, size):
    model = build_model(_cfg(name, size=size))
    assert model.name == f"unet_{name}"
    assert tuple(model.input.shape) == (None, size, size, 1)
    assert tuple(model.output.shape) == (None, size, size, 1)
    out = model(_images(1, size), training=False)
    assert out.shape == (1, size, size, 1) and out.dtype == tf.float32
    assert np.isfinite(np.asarray(out)).all()
    for stage in (1, 4):  # the upsampler takes its input to 2x, before the crop
        up = model.get_layer(f"decoder{stage}_up")
        h_in = up.input[0].shape[1] if isinstance(up.input, list) else up.input.shape[1]
        assert up.output.shape[1] == 2 * h_in


@pytest.mark.parametrize("name", NAMES)
def test_gradient_reaches_every_weight(name):
    model = build_model(_cfg(name, size=101, depth=3))
    x = tf.constant(_images(2, 101))
    w = tf.constant(np.random.default_rng(1).standard_normal((2, 101, 101, 1)).astype("float32"))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(x, training=True) * w)
    grads = tape.gradient(loss, model.trainable_weights)
    assert len(grads) == len(model.trainable_weights) > 0
    for var, g in zip(model.trainable_weights, grads, strict=True):
        assert g is not None, var.path
        assert np.any(np.asarray(g) != 0), var.path


@pytest.mark.parametrize("name", NAMES)
def test_save_and_load_round_trip(name, tmp_path):
    model = build_model(_cfg(name, size=101, depth=2))
    x = _images(2, 101, seed=3)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects: the layers are registered
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), rtol=1e-6, atol=1e-6)
    for stage in (1, 2):
        orig, again = model.get_layer(f"decoder{stage}_up"), loaded.get_layer(f"decoder{stage}_up")
        assert type(again) is type(orig)
        assert again.get_config() == orig.get_config()


# ----------------------------------------------------------------------------- the operators themselves


def _numpy_pool_argmax(x):
    """2x2 'SAME' max pooling in numpy: pooled values and the (row, col) of each maximum."""
    b, h, w, c = x.shape
    hp, wp = -(-h // 2), -(-w // 2)
    padded = np.full((b, 2 * hp, 2 * wp, c), -np.inf)
    padded[:, :h, :w] = x
    cells = padded.reshape(b, hp, 2, wp, 2, c).transpose(0, 1, 3, 5, 2, 4).reshape(b, hp, wp, c, 4)
    k = cells.argmax(-1)
    rows = 2 * np.arange(hp)[None, :, None, None] + k // 2
    cols = 2 * np.arange(wp)[None, None, :, None] + k % 2
    return cells.max(-1), rows, cols


@pytest.mark.parametrize("shape", [(2, 7, 9, 3), (1, 8, 6, 2), (2, 13, 13, 4)])
def test_maxunpool_puts_each_value_at_its_argmax(shape):
    x = np.random.default_rng(4).standard_normal(shape).astype("float32")
    pooled, idx = L.MaxPoolWithArgmax()(x)
    want_pooled, rows, cols = _numpy_pool_argmax(x)
    np.testing.assert_array_equal(np.asarray(pooled), want_pooled)
    values = np.random.default_rng(5).standard_normal(pooled.shape).astype("float32")
    out = np.asarray(L.MaxUnpool2D()([values, idx]))
    b, h, w, c = shape
    assert out.shape == (b, 2 * pooled.shape[1], 2 * pooled.shape[2], c)
    want = np.zeros(out.shape, dtype="float32")
    bi, ci = np.arange(b)[:, None, None, None], np.arange(c)[None, None, None, :]
    want[bi, rows, cols, ci] = values
    np.testing.assert_array_equal(out, want)
    assert not out[:, h:].any() and not out[:, :, w:].any()  # the padded row/column stays empty
    np.testing.assert_array_equal(out[:, :h, :w][out[:, :h, :w] != 0], want[:, :h, :w][want[:, :h, :w] != 0])


def test_maxunpool_accepts_tf_indices_with_the_batch_offset():
    x = np.random.default_rng(6).standard_normal((3, 8, 8, 2)).astype("float32")
    pooled, idx = tf.nn.max_pool_with_argmax(x, 2, 2, "SAME", include_batch_in_index=True)
    ours = L.MaxUnpool2D()([pooled, L.MaxPoolWithArgmax()(x)[1]])
    np.testing.assert_array_equal(np.asarray(L.MaxUnpool2D()([pooled, idx])), np.asarray(ours))
    # Unpooling the pooled map keeps exactly the maxima of the input.
    kept = np.asarray(ours)
    assert np.count_nonzero(kept) == pooled.shape[1] * pooled.shape[2] * 2 * 3
    np.testing.assert_array_equal(kept[kept != 0], x[kept != 0])


def test_bed_of_nails_puts_each_value_top_left():
    x = np.random.default_rng(7).standard_normal((2, 5, 3, 4)).astype("float32") + 10.0  # no zeros
    out = np.asarray(L.BedOfNails2D()(x))
    assert out.shape == (2, 10, 6, 4)
    np.testing.assert_array_equal(out[:, ::2, ::2], x)
    for i, j in ((0, 1), (1, 0), (1, 1)):
        assert not out[:, i::2, j::2].any()


def test_pixel_shuffle_and_channel_group_sum():
    x = np.arange(2 * 3 * 8, dtype="float32").reshape(1, 2, 3, 8)  # C = 2 per sub-pixel
    out = np.asarray(L.PixelShuffle2D()(x))
    for i in range(2):
        for j in range(2):
            np.testing.assert_array_equal(out[0, i::2, j::2], x[0, :, :, (i * 2 + j) * 2 : (i * 2 + j) * 2 + 2])
    summed = np.asarray(L.ChannelGroupSum(4)(x))
    np.testing.assert_array_equal(summed, x.reshape(1, 2, 3, 2, 4).sum(-1))


def _const_response(layer, channels, indices=None, size=12):
    ones = tf.ones((1, size, size, channels))
    out = np.asarray(layer([ones, indices]) if indices is not None else layer(ones))[0, 2:-2, 2:-2]
    flat = out.reshape(-1, out.shape[-1])
    return float((flat.std(0) / np.maximum(np.abs(flat).mean(0), 1e-12)).max())


@pytest.mark.parametrize(
    "name,options,flat",
    [
        ("pixel_shuffle", {"icnr": True}, True),
        ("pixel_shuffle", {"icnr": False}, False),
        ("upsampling", {"interpolation": "nearest"}, True),
        ("upsampling", {"interpolation": "bilinear"}, True),
        ("bilinear_additive", {}, True),
        ("transposed", {"kernel_size": 3}, False),
        ("bed_of_nails", {}, False),
        ("maxunpool", {}, False),
    ],
)
def test_constant_response_of_the_upsampler_at_init(name, options, flat):
    """ICNR, resizes: constant in → constant out at init. Uneven overlaps and unpooling: periodic."""
    model = build_model(_cfg(name, size=64, depth=2, options=options))
    for stage in (1, 2):
        up = model.get_layer(f"decoder{stage}_up")
        inputs = up.input if isinstance(up.input, list) else [up.input]
        indices = None
        if DECODERS[name].needs_indices:
            indices = L.MaxPoolWithArgmax()(tf.ones((1, 24, 24, inputs[1].shape[-1])))[1]
        score = _const_response(up, inputs[0].shape[-1], indices)
        assert (score < 1e-5) if flat else (score > 1e-2), (stage, score)


# ----------------------------------------------------------------------------- registry validation


def test_resolve_fills_defaults_and_ignores_none():
    spec, opts = resolve_decoder("transposed", {"kernel_size": None, "interpolation": None, "icnr": None})
    assert spec is DECODERS["transposed"] and opts == {"kernel_size": 3}
    assert resolve_decoder("transposed", {"kernel_size": 4})[1] == {"kernel_size": 4}
    assert resolve_decoder("transposed", {"kernel_size": "4"})[1] == {"kernel_size": 4}
    assert resolve_decoder("pixel_shuffle", {"icnr": "false"})[1] == {"icnr": False}
    assert resolve_decoder("maxunpool", None)[1] == {}
    assert resolve_decoder("bilinear_additive", {})[1] == {"groups": 4}


def test_unknown_decoder_lists_the_valid_names():
    with pytest.raises(ConfigError) as err:
        resolve_decoder("deconv", {})
    assert "deconv" in str(err.value)
    for name in EXPECTED:
        assert name in str(err.value)
    with pytest.raises(ConfigError):
        build_model(_cfg("deconv"))


def test_foreign_option_names_what_the_decoder_takes():
    with pytest.raises(ConfigError, match=r"decoder 'transposed' takes options: kernel_size \(got: interpolation\)"):
        resolve_decoder("transposed", {"interpolation": "bilinear"})
    with pytest.raises(ConfigError, match=r"decoder 'maxunpool' takes options: none \(got: kernel_size\)"):
        resolve_decoder("maxunpool", {"kernel_size": 3})


@pytest.mark.parametrize(
    "name,key,value,allowed",
    [
        ("transposed", "kernel_size", 5, "3, 4"),
        ("transposed", "kernel_size", True, "3, 4"),
        ("upsampling", "interpolation", "bicubic", "nearest, bilinear"),
        ("pixel_shuffle", "icnr", 1, "true, false"),
        ("bilinear_additive", "groups", 3, "1, 2, 4, 8"),
    ],
)
def test_bad_value_names_the_key_and_the_allowed_values(name, key, value, allowed):
    with pytest.raises(ConfigError, match=rf"decoder\.{key} must be one of {allowed}"):
        resolve_decoder(name, {key: value})

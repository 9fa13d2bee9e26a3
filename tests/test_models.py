"""The U-Net assembly: shapes, names, the encoder contract, options, mixed precision, ``segnet shapes``."""

from __future__ import annotations

from types import SimpleNamespace as NS

import keras
import numpy as np
import pytest

from segnet.errors import ConfigError
from segnet.models import CUSTOM_OBJECTS, build_model, count_params, encoder
from segnet.models import layers as L  # noqa: N812
from segnet.models.shapes import describe


def _cfg(decoder="transposed", size=112, depth=4, filters=16, residual=False, dropout=0.0, options=None):
    return NS(
        data=NS(size=size),
        model=NS(decoder=decoder, depth=depth, filters=filters, residual=residual, dropout=dropout),
        decoder=dict(options or {}),
    )


def test_default_model_shapes_names_and_head():
    model = build_model(_cfg())
    assert model.name == "unet_transposed"
    assert tuple(model.input.shape) == (None, 112, 112, 1) and model.input.dtype == "float32"
    assert tuple(model.output.shape) == (None, 112, 112, 1)
    assert model.get_layer("logits").dtype_policy.compute_dtype == "float32"
    for stage in range(1, 5):
        up = model.get_layer(f"decoder{stage}_up")
        assert isinstance(up, keras.layers.Conv2DTranspose)
        assert up.filters == 16 * 2 ** (4 - stage)  # stage 1 is next to the bottleneck
        assert model.get_layer(f"decoder{stage}_out").output.shape[-1] == up.filters
    with pytest.raises(ValueError):
        model.get_layer("decoder5_up")
    assert count_params(model) == model.count_params() == 2_162_833


def test_encoder_contract_skips_high_to_low_and_indices():
    x = keras.Input((101, 101, 1))
    bottleneck, skips, indices = encoder(x, depth=4, filters=8)
    assert [tuple(s.shape[1:]) for s in skips] == [(101, 101, 8), (51, 51, 16), (26, 26, 32), (13, 13, 64)]
    assert tuple(bottleneck.shape[1:]) == (7, 7, 128)
    assert indices == [None] * 4
    _, _, indices = encoder(keras.Input((101, 101, 1)), depth=4, filters=8, with_indices=True)
    assert [tuple(i.shape[1:]) for i in indices] == [(51, 51, 8), (26, 26, 16), (13, 13, 32), (7, 7, 64)]
    assert all(i.dtype == "int64" for i in indices)


def test_argmax_pooling_only_when_the_decoder_needs_indices():
    def pools(model):
        return {type(layer).__name__ for layer in model.layers if layer.name.endswith("_pool")}

    assert pools(build_model(_cfg("maxunpool", size=64, filters=4))) == {"MaxPoolWithArgmax"}
    assert pools(build_model(_cfg("upsampling", size=64, filters=4))) == {"MaxPooling2D"}


@pytest.mark.parametrize("size", [64, 101, 112, 128])
def test_sizes_and_depths(size):
    for depth in (1, 4):
        model = build_model(_cfg("bilinear_additive", size=size, depth=depth, filters=4))
        assert tuple(model.output.shape) == (None, size, size, 1)


def test_residual_and_dropout_change_the_model():
    plain = build_model(_cfg(size=64, filters=8))
    res = build_model(_cfg(size=64, filters=8, residual=True, dropout=0.3))
    names = {layer.name for layer in res.layers}
    assert "encoder1_add" in names and "decoder4_add" in names and "encoder1_proj_conv" in names
    assert {"encoder2_dropout", "bottleneck_dropout"} <= names and "encoder1_dropout" not in names
    assert count_params(res) > count_params(plain)
    x = np.ones((1, 64, 64, 1), "float32")
    np.testing.assert_allclose(np.asarray(res(x, training=False)), np.asarray(res(x, training=False)))


def test_mixed_precision_keeps_float32_logits():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_model(_cfg("pixel_shuffle", size=64, depth=2, filters=4))
        assert model.get_layer("decoder1_up").compute_dtype == "float16"
        assert model.output.dtype == "float32"
        model_mu = build_model(_cfg("maxunpool", size=64, depth=2, filters=4))
        assert model_mu.get_layer("decoder1_up").compute_dtype == "float16"
        assert model_mu.output.dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_bad_model_settings_raise_config_errors():
    with pytest.raises(ConfigError, match="model.depth"):
        build_model(_cfg(depth=0))
    with pytest.raises(ConfigError, match="data.size"):
        build_model(_cfg(size=8, depth=4))
    with pytest.raises(ConfigError, match="decoder.kernel_size"):
        build_model(_cfg(options={"kernel_size": 5}))


def test_custom_objects_are_registered_for_loading():
    for name, cls in CUSTOM_OBJECTS.items():
        assert keras.saving.get_registered_object(f"segnet>{name}") is cls
    assert L.MaxUnpool2D().supports_jit is False and L.MaxPoolWithArgmax().supports_jit is False


def test_describe_lists_every_stage_and_the_overlap():
    text = describe(_cfg("transposed", size=101, filters=4))
    for word in ("encoder1", "encoder4", "bottleneck", "decoder1", "decoder4", "logits", "7x7x64", "101x101x1"):
        assert word in text
    assert "4  2" in text and "0.75" in text
    assert "0.00" in describe(_cfg("transposed", size=64, filters=4, options={"kernel_size": 4}))
    assert "1 of 4" in describe(_cfg("bed_of_nails", size=64, depth=2, filters=4))
    assert "1 of 4" in describe(_cfg("maxunpool", size=64, depth=2, filters=4))


def _bn_pair(channels=6, **kwargs):
    ref, fused = keras.layers.BatchNormalization(**kwargs), L.FusedBatchNormalization(**kwargs)
    ref.build((None, 5, 7, channels))
    fused.build((None, 5, 7, channels))
    rng = np.random.default_rng(1)
    for v in ref.weights:  # non-trivial gamma, beta and moving statistics, shared by both
        v.assign(rng.uniform(0.5, 1.5, v.shape).astype("float32"))
    fused.set_weights(ref.get_weights())
    return ref, fused


def test_fused_batch_norm_matches_keras_in_inference_and_training():
    ref, fused = _bn_pair(momentum=0.9)
    mean0, var0 = np.asarray(fused.moving_mean).copy(), np.asarray(fused.moving_variance).copy()
    x = (np.random.default_rng(2).standard_normal((3, 5, 7, 6)) * 2 + 1).astype("float32")
    np.testing.assert_allclose(fused(x, training=False), ref(x, training=False), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(fused.moving_mean), mean0)  # inference leaves the statistics
    np.testing.assert_allclose(fused(x, training=True), ref(x, training=True), rtol=1e-4, atol=1e-4)
    # The statistics moved from their initial values, by momentum towards the batch's (biased) moments...
    assert not np.allclose(np.asarray(fused.moving_mean), mean0)  # it did move
    np.testing.assert_allclose(fused.moving_mean, 0.9 * mean0 + 0.1 * x.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fused.moving_variance, 0.9 * var0 + 0.1 * x.var(axis=(0, 1, 2)), rtol=1e-5, atol=1e-5)
    for a, b in zip(fused.weights, ref.weights, strict=True):  # ...exactly as Keras' own layer moved them
        assert a.path.split("/")[-1] == b.path.split("/")[-1]
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    ref2, fused2 = _bn_pair(channels=4, center=False, scale=False)
    y = np.random.default_rng(3).standard_normal((2, 3, 3, 4)).astype("float32")
    np.testing.assert_allclose(fused2(y, training=True), ref2(y, training=True), rtol=1e-4, atol=1e-4)
    flat = np.ones((2, 4), "float32")  # not 4-D: the parent's call
    np.testing.assert_allclose(L.FusedBatchNormalization()(flat, training=True), np.zeros((2, 4)), atol=1e-6)


def test_fused_batch_norm_in_models_and_save_load(tmp_path):
    model = build_model(_cfg(size=32, depth=2, filters=4))
    bns = [layer for layer in model.layers if "BatchNormalization" in type(layer).__name__]
    assert bns and all(type(layer) is L.FusedBatchNormalization for layer in bns)
    assert L.FusedBatchNormalization().get_config().keys() == keras.layers.BatchNormalization().get_config().keys()
    model.compile(optimizer="adam", loss=keras.losses.BinaryCrossentropy(from_logits=True))
    x = np.random.default_rng(4).standard_normal((4, 32, 32, 1)).astype("float32")
    before = np.asarray(bns[0].moving_mean).copy()
    model.fit(x, (x > 0).astype("float32"), batch_size=4, epochs=1, verbose=0)
    assert not np.allclose(before, np.asarray(bns[0].moving_mean))  # fit trains
    frozen = [np.asarray(v).copy() for v in bns[0].non_trainable_weights]
    pred = model.predict(x, verbose=0)  # predict uses the moving statistics and changes nothing
    for a, b in zip(frozen, bns[0].non_trainable_weights, strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.get_layer(bns[0].name)) is L.FusedBatchNormalization
    np.testing.assert_allclose(loaded.predict(x, verbose=0), pred, rtol=1e-5, atol=1e-5)


def _np_unpool(x, indices):
    """Numpy reference: each value of x at its flat per-image index in the (2h, 2w, C) grid."""
    b, h, w, c = x.shape
    out = np.zeros((b, 4 * h * w * c), x.dtype)
    for i in range(b):
        out[i, indices[i].ravel() % (4 * h * w * c)] = x[i].ravel()
    return out.reshape(b, 2 * h, 2 * w, c)


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (2, 7, 9, 2), (1, 5, 5, 4)])
def test_dense_max_unpool_equals_scatter_and_numpy(shape):
    import tensorflow as tf

    rng = np.random.default_rng(5)
    a = tf.constant(rng.standard_normal(shape), tf.float32)
    pooled, idx = L.MaxPoolWithArgmax()(a)
    v = tf.constant(rng.standard_normal(pooled.shape), tf.float32)
    dense, scatter = L.max_unpool(v, idx), L.max_unpool_scatter(v, idx)
    np.testing.assert_array_equal(dense.numpy(), scatter.numpy())
    np.testing.assert_array_equal(dense.numpy(), _np_unpool(v.numpy(), idx.numpy()))
    up = L.MaxUnpool2D()([pooled, idx]).numpy()[:, : shape[1], : shape[2]]  # crop: each max back in place
    assert np.count_nonzero(up) == pooled.numpy().size
    np.testing.assert_array_equal(up[up != 0], a.numpy()[up != 0])
    w = tf.constant(rng.standard_normal(dense.shape), tf.float32)
    grads = []
    for fn in (L.max_unpool, L.max_unpool_scatter):
        with tf.GradientTape() as tape:
            tape.watch(v)
            s = tf.reduce_sum(fn(v, idx) * w)
        grads.append(tape.gradient(s, v).numpy())
    np.testing.assert_array_equal(grads[0], grads[1])

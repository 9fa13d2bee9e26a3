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

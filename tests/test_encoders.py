"""The encoder seam: the registry and its contract, the ``unet`` encoder being exactly the pre-registry
U-Net, the encoder/decoder pairing check, ``segnet shapes`` reading the encoder's stages, and the
batch-norm layer as a parameter of the builder."""

from __future__ import annotations

import math
import pkgutil
from types import SimpleNamespace as NS

import keras
import numpy as np
import pytest

import segnet.models.encoders as encoders_pkg
from segnet.config import ModelConfig, load_config
from segnet.errors import ConfigError
from segnet.models import DECODERS, ENCODERS, EncoderOutput, EncoderSpec, build_model, count_params
from segnet.models.blocks import conv_block
from segnet.models.decoders import resolve_decoder
from segnet.models.layers import FusedBatchNormalization, MaxPoolWithArgmax
from segnet.models.shapes import describe

NAMES = list(ENCODERS)


def _cfg(decoder="transposed", encoder=None, size=64, depth=3, filters=4, residual=False, dropout=0.0):
    model = NS(decoder=decoder, depth=depth, filters=filters, residual=residual, dropout=dropout)
    if encoder is not None:
        model.encoder = encoder
    return NS(data=NS(size=size), model=model, decoder={})


# ----------------------------------------------------------------------------- the registry and its contract


def test_registry_holds_every_encoder_module_and_unet_is_the_default():
    modules = {m.name for m in pkgutil.iter_modules(encoders_pkg.__path__) if not m.name.startswith("_")}
    assert {ENCODERS.modules[n].rsplit(".", 1)[-1] for n in ENCODERS} == modules
    assert NAMES[0] == ModelConfig.encoder == load_config().model.encoder == "unet"
    assert ENCODERS["unet"].provides_indices
    for name, spec in ENCODERS.items():
        assert spec.name == name and spec.description and "\n" not in spec.description


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("with_indices", [False, True])
def test_every_encoder_keeps_the_contract(name, with_indices):
    spec = ENCODERS[name]
    if with_indices and not spec.provides_indices:
        pytest.skip("no pooling indices to ask for")
    depth, size, filters = 4, 101, 4
    out = spec.build(keras.Input((size, size, 1)), depth=depth, filters=filters, with_indices=with_indices)
    assert isinstance(out, EncoderOutput)
    assert len(out.skips) == len(out.indices) == depth
    for i, skip in enumerate(out.skips):  # highest resolution first, ceil halving ('SAME' pooling)
        assert tuple(skip.shape)[1:3] == (math.ceil(size / 2**i),) * 2
        if with_indices:
            assert tuple(out.indices[i].shape)[1:] == (math.ceil(size / 2 ** (i + 1)),) * 2 + (skip.shape[-1],)
        else:
            assert out.indices[i] is None
    assert tuple(out.bottleneck.shape)[1:3] == (math.ceil(size / 2**depth),) * 2
    assert len(out.downsampled) in (0, depth)


def test_unknown_encoder_lists_the_valid_names():
    with pytest.raises(ConfigError, match=r"model.encoder: unknown encoder 'resnet99'; valid: .*unet"):
        load_config(None, ["model.encoder=resnet99"])


# ----------------------------------------------------------------------------- unet = the pre-registry U-Net


def _pre_registry_model(cfg):
    """The U-Net as segnet built it before the encoder registry (frozen here as the reference)."""
    size, m = cfg.data.size, cfg.model
    depth, filters, residual, dropout = m.depth, m.filters, m.residual, m.dropout
    spec, options = resolve_decoder(m.decoder, cfg.decoder)
    block = spec.make_block(**options)
    x = inputs = keras.Input((size, size, 1), dtype="float32", name="image")
    skips, indices = [], []
    for level in range(depth):
        x = conv_block(x, filters * 2**level, name=f"encoder{level + 1}", residual=residual)
        skips.append(x)
        if spec.needs_indices:
            x, idx = MaxPoolWithArgmax(name=f"encoder{level + 1}_pool")(x)
        else:
            x, idx = keras.layers.MaxPooling2D(2, padding="same", name=f"encoder{level + 1}_pool")(x), None
        indices.append(idx)
        if dropout > 0 and level > 0:
            x = keras.layers.Dropout(dropout, name=f"encoder{level + 1}_dropout")(x)
    x = conv_block(x, filters * 2**depth, name="bottleneck", residual=residual)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="bottleneck_dropout")(x)
    for stage in range(1, depth + 1):
        level = depth - stage
        x = block(x, skips[level], filters=filters * 2**level, stage=stage, indices=indices[level], residual=residual)
    logits = keras.layers.Conv2D(1, 1, dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name=f"unet_{spec.name}")


@pytest.mark.parametrize("decoder,residual,dropout", [("transposed", False, 0.0), ("maxunpool", False, 0.0),
                                                       ("pixel_shuffle", True, 0.3)])
def test_unet_encoder_gives_the_pre_registry_model_bit_for_bit(decoder, residual, dropout):
    cfg = _cfg(decoder, encoder="unet", size=101, depth=3, filters=4, residual=residual, dropout=dropout)
    keras.utils.set_random_seed(7)
    ref = _pre_registry_model(cfg)
    keras.utils.set_random_seed(7)
    new = build_model(cfg)
    assert new.name == ref.name
    assert [(type(a), a.name, a.get_config()) for a in new.layers] == [(type(b), b.name, b.get_config())
                                                                       for b in ref.layers]
    assert count_params(new) == count_params(ref)
    assert [w.path for w in new.weights] == [w.path for w in ref.weights]
    for a, b in zip(new.weights, ref.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)
    x = np.random.default_rng(0).random((2, 101, 101, 1), dtype=np.float32)
    np.testing.assert_array_equal(np.asarray(new(x)), np.asarray(ref(x)))


def test_default_model_keeps_its_parameter_count():
    cfg = load_config(None, ["data.size=112"])  # README: 2,162,833 at depth 4, 16 filters
    assert count_params(build_model(cfg)) == 2_162_833


# ----------------------------------------------------------------------------- a second encoder


def _strided_build(x, *, depth, filters, residual=False, dropout=0.0, with_indices=False, batch_norm=None):
    """An encoder with other layer names and stride-2 convs instead of pooling: no indices, no 'pooled'."""
    skips = []
    for level in range(depth):
        x = keras.layers.Conv2D(filters * 2**level, 3, padding="same", activation="relu", name=f"enc_a{level}")(x)
        skips.append(x)
        x = keras.layers.Conv2D(filters * 2**level, 3, strides=2, padding="same", name=f"enc_down{level}")(x)
    x = keras.layers.Conv2D(filters * 2**depth, 3, padding="same", name="enc_bottom")(x)
    return EncoderOutput(bottleneck=x, skips=skips, indices=[None] * depth)


@pytest.fixture
def strided_encoder():
    spec = EncoderSpec(name="strided_test", description="stride-2 convs", provides_indices=False,
                       build=_strided_build)
    ENCODERS.register(spec)
    try:
        yield spec
    finally:
        ENCODERS.unregister(spec.name)


def test_maxunpool_with_an_encoder_without_indices_is_a_config_error(strided_encoder):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.encoder=strided_test", "model.decoder=maxunpool"])
    assert "maxunpool" in str(err.value) and "strided_test" in str(err.value) and "unet" in str(err.value)
    with pytest.raises(ConfigError, match="strided_test"):
        build_model(_cfg("maxunpool", encoder="strided_test"))
    for name, spec in DECODERS.items():  # every other decoder pairs with it
        if not spec.needs_indices:
            assert load_config(None, ["model.encoder=strided_test", f"model.decoder={name}"]).model.encoder


def test_shapes_reads_the_stages_from_the_encoder(strided_encoder):
    cfg = load_config(None, ["model.encoder=strided_test", "model.depth=3", "model.filters=4", "data.size=64",
                             "data.resize_mode=resize"])
    model = build_model(cfg)
    assert model.name == "strided_test_transposed" and model.get_layer("enc_a0")
    text = describe(cfg)
    assert "encoder strided_test" in text
    for line, want in (("encoder1", "64x64x4"), ("encoder3", "16x16x16"), ("bottleneck", "8x8x32")):
        assert any(row.split()[:2] == [line, want] for row in text.splitlines()), text
    assert "pooled" not in text  # this encoder declares no downsampled tensors
    assert "pooled -> 32x32x16" in describe(load_config(None, ["model.depth=3", "data.size=64",
                                                               "data.resize_mode=resize"]))


# ----------------------------------------------------------------------------- batch norm as a parameter


@pytest.mark.parametrize("decoder,residual", [("transposed", False), ("maxunpool", True)])
def test_batch_norm_layer_is_a_parameter(decoder, residual):
    cfg = _cfg(decoder, residual=residual)
    fused = build_model(cfg)
    plain = build_model(cfg, batch_norm=keras.layers.BatchNormalization)
    assert [a.name for a in fused.layers] == [b.name for b in plain.layers]
    assert count_params(fused) == count_params(plain)
    bn_fused = [a for a in fused.layers if isinstance(a, keras.layers.BatchNormalization)]
    bn_plain = [a for a in plain.layers if isinstance(a, keras.layers.BatchNormalization)]
    assert len(bn_fused) == len(bn_plain) > 4 * 3  # every conv block: encoder, bottleneck, decoder
    assert all(type(a) is FusedBatchNormalization for a in bn_fused)
    assert all(type(a) is keras.layers.BatchNormalization for a in bn_plain)

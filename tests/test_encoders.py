"""The encoder seam: the registry and its contract, the ``unet`` encoder being exactly the pre-registry
U-Net, the encoder/decoder pairing check, ``segnet shapes`` reading the encoder's stages, the
batch-norm layer as a parameter of the builder, every encoder with every decoder, and the ``resnet``
encoder: its stages at every depth, its gradients, its pretrained weights (loaded from files the tests
make; the ``imagenet`` download failing as one line without network)."""

from __future__ import annotations

import math
import pkgutil
from types import SimpleNamespace as NS

import keras
import numpy as np
import pytest
import tensorflow as tf

import segnet.models.encoders as encoders_pkg
from segnet.config import ModelConfig, load_config
from segnet.errors import ConfigError
from segnet.models import DECODERS, ENCODERS, EncoderOutput, EncoderSpec, build_model, count_params
from segnet.models.blocks import conv_block
from segnet.models.decoders import resolve_decoder
from segnet.models.layers import FusedBatchNormalization, MaxPoolWithArgmax
from segnet.models.shapes import describe
from segnet.models.unet import assemble

from .procs import run, run_statuses, segnet_env, tiny_overrides

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


# ----------------------------------------------------------------------------- every encoder with every decoder


@pytest.mark.parametrize("decoder", list(DECODERS))
@pytest.mark.parametrize("encoder", NAMES)
def test_every_encoder_decoder_pair_builds_and_keeps_the_skip_shapes(encoder, decoder):
    if DECODERS[decoder].needs_indices and not ENCODERS[encoder].provides_indices:
        pytest.skip("a config error (test_maxunpool_with_an_encoder_without_indices_is_a_config_error)")
    for size in (101, 112, 128):
        unet = assemble(_cfg(decoder, encoder=encoder, size=size, depth=4))
        assert tuple(unet.model.output.shape) == (None, size, size, 1)
        for i, skip in enumerate(unet.features.skips):  # decoder stage depth - i merges skip i at its shape
            want = (math.ceil(size / 2**i),) * 2
            assert tuple(skip.shape)[1:3] == want
            assert tuple(unet.model.get_layer(f"decoder{4 - i}_out").output.shape)[1:3] == want
    out = unet.model(np.random.default_rng(0).random((1, 128, 128, 1), dtype=np.float32), training=False)
    assert np.isfinite(np.asarray(out)).all()


# ----------------------------------------------------------------------------- resnet


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5, 6])
def test_resnet_keeps_the_contract_at_every_depth(depth):
    size, filters = 101, 2
    x = keras.Input((size, size, 1))
    out = ENCODERS["resnet"].build(x, depth=depth, filters=filters, dropout=0.2, with_indices=True)
    widths = [filters * 2 ** min(k, 3) for k in range(depth + 1)]  # stages beyond ResNet-34's four stay at 8x
    for i, skip in enumerate(out.skips):
        assert tuple(skip.shape)[1:] == (math.ceil(size / 2**i),) * 2 + (widths[i],)
        assert tuple(out.indices[i].shape)[1:] == (math.ceil(size / 2 ** (i + 1)),) * 2 + (widths[i],)
    assert tuple(out.bottleneck.shape)[1:] == (math.ceil(size / 2**depth),) * 2 + (widths[depth],)
    names = [layer.name for layer in keras.Model(x, [out.bottleneck, *out.indices]).layers[1:]]
    assert len(names) == len(set(names))
    assert not any(n.startswith("decoder") or n in ("logits", "image") for n in names)
    blocks = {n.split("_")[0]: int(n.split("_")[1][5:]) + 1 for n in names if n.endswith("_out")}
    assert blocks == {f"encoder{k + 1}": (3, 4, 6, 3, 1, 1, 1)[k] for k in range(depth + 1)}
    assert ("encoder2_dropout" in names) == (depth > 1) and "bottleneck_dropout" in names


def test_resnet_stem_is_a_full_resolution_7x7_conv_and_its_batch_norm_is_a_parameter():
    cfg = _cfg("transposed", encoder="resnet", size=101, depth=2)
    model = build_model(cfg, batch_norm=keras.layers.BatchNormalization)
    stem = model.get_layer("encoder_stem_conv")
    assert stem.kernel_size == (7, 7) and stem.strides == (1, 1) and tuple(stem.output.shape)[1:3] == (101, 101)
    bns = [a for a in model.layers if a.name.startswith("encoder") and a.name.endswith("_bn")]
    assert len(bns) == 1 + 2 * (3 + 4 + 6) + 2  # stem, two per block (stages 1-3 at depth 2), 2 shortcuts
    assert all(type(a) is keras.layers.BatchNormalization and a.epsilon == pytest.approx(1.001e-5) for a in bns)


@pytest.mark.parametrize("decoder", ["transposed", "maxunpool"])
def test_gradients_reach_every_resnet_weight(decoder):
    model = build_model(_cfg(decoder, encoder="resnet", size=40, depth=3))
    x = tf.constant(np.random.default_rng(0).random((2, 40, 40, 1), dtype=np.float32))
    w = tf.constant(np.random.default_rng(1).standard_normal((2, 40, 40, 1)).astype("float32"))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(x, training=True) * w)
    grads = tape.gradient(loss, model.trainable_weights)
    encoder_vars = [v.path for v in model.trainable_weights if v.path.startswith("encoder")]
    assert len(encoder_vars) > 100
    for var, g in zip(model.trainable_weights, grads, strict=True):
        assert g is not None and np.any(np.asarray(g) != 0), var.path


def test_resnet_model_saves_and_reloads(tmp_path):
    model = build_model(_cfg("maxunpool", encoder="resnet", size=40, depth=2))
    x = np.random.default_rng(3).random((2, 40, 40, 1), dtype=np.float32)
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(np.asarray(again(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- resnet: pretrained weights


def test_encoder_weights_config_errors_name_the_key(tmp_path):
    cases = {
        ("model.encoder_weights=imagenet",): "model.encoder 'unet' takes none (encoders that do: resnet)",
        ("model.encoder=resnet", "model.encoder_weights=imagenet"): "needs model.filters=64",
        ("model.encoder=resnet", "model.filters=64", f"model.encoder_weights={tmp_path}/nope.weights.h5"):
            "nope.weights.h5 does not exist",
    }
    for overrides, words in cases.items():
        with pytest.raises(ConfigError) as err:
            load_config(None, list(overrides))
        assert "model.encoder_weights" in str(err.value) and words in str(err.value)
        assert "\n" not in str(err.value)
    ok = load_config(None, ["model.encoder=resnet", "model.filters=64", "model.encoder_weights=imagenet"])
    assert ok.model.encoder_weights == "imagenet" and ok.hash() != load_config().hash()
    assert load_config().model.encoder_weights is None and ModelConfig.encoder_weights is None


@pytest.fixture(scope="module")
def resnet34_source(tmp_path_factory):
    """A randomly initialised keras-hub ResNet-34 backbone (the layout ``imagenet`` downloads), its
    weights saved as ``.weights.h5`` and as a keras-hub preset folder; nothing is downloaded."""
    from keras_hub.models import ResNetBackbone

    from segnet.models.encoders import resnet

    d = tmp_path_factory.mktemp("resnet34")
    keras.utils.set_random_seed(3)
    backbone = ResNetBackbone(**resnet.RESNET34)
    for layer in backbone.layers:  # BN statistics other than 0/1, so that a missed copy shows
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_variance.assign(np.random.default_rng(1).uniform(0.5, 2.0, layer.moving_variance.shape))
    backbone.save_weights(d / "resnet34.weights.h5")
    backbone.save_to_preset(str(d / "preset"))
    _save_timm_snapshot(backbone, d / "timm")
    return backbone, d


def _save_timm_snapshot(backbone, folder):
    """The backbone as the Hugging Face snapshot that ``imagenet`` downloads (timm's torch layout:
    ``layer{s+1}.{b}.conv1.weight`` as (out, in, h, w), ``bn1.running_var``, ...)."""
    from safetensors.numpy import save_file

    from segnet.models.encoders import resnet

    tensors = {}

    def port(layer, torch_name):
        layer = backbone.get_layer(layer)
        if isinstance(layer, keras.layers.Conv2D):
            tensors[f"{torch_name}.weight"] = np.ascontiguousarray(np.transpose(np.asarray(layer.kernel), (3, 2, 0, 1)))
            return
        for ours, theirs in (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
                             ("moving_variance", "running_var")):
            tensors[f"{torch_name}.{theirs}"] = np.asarray(getattr(layer, ours))

    port("conv1_conv", "conv1")
    port("conv1_bn", "bn1")
    for s, blocks in enumerate(resnet.BLOCKS):
        for b in range(blocks):
            ours, theirs = f"stack{s}_block{b}", f"layer{s + 1}.{b}"
            if b == 0 and s > 0:
                port(f"{ours}_0_conv", f"{theirs}.downsample.0")
                port(f"{ours}_0_bn", f"{theirs}.downsample.1")
            for j in (1, 2):
                port(f"{ours}_{j}_conv", f"{theirs}.conv{j}")
                port(f"{ours}_{j}_bn", f"{theirs}.bn{j}")
    folder.mkdir()
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text('{"architecture": "resnet34", "num_classes": 1000}')


def _resnet64_cfg(weights, depth=3):
    return load_config(None, ["model.encoder=resnet", "model.filters=64", f"model.depth={depth}", "data.size=101",
                              f"model.encoder_weights={weights}"])


@pytest.mark.parametrize("where", ["resnet34.weights.h5", "preset", "timm", "imagenet"])
def test_weights_file_loads_through_the_imagenet_conversion(resnet34_source, where, monkeypatch):
    """Every source, ``imagenet`` included (its download answered by the snapshot folder it would fetch),
    goes through one conversion: the stem's RGB kernel summed, every other layer copied exactly."""
    from segnet.models.encoders import fetch_weights, resnet

    backbone, d = resnet34_source
    def download(preset):  # what the Hugging Face Hub would give: timm's snapshot of the preset
        assert preset == resnet.IMAGENET
        return str(d / "timm")

    monkeypatch.setattr(resnet, "_download", download)
    cfg = _resnet64_cfg(where if where == "imagenet" else d / where)
    apply = fetch_weights(cfg)
    model = build_model(cfg)
    before = np.asarray(model.get_layer("decoder1_2_conv").kernel).copy()
    source_layers = [layer for layer in backbone.layers if layer.weights]
    assert apply(model) == len(source_layers)  # depth 3: ResNet-34's four stages, every layer of them
    rgb = np.asarray(backbone.get_layer("conv1_conv").kernel)
    np.testing.assert_array_equal(np.asarray(model.get_layer("encoder_stem_conv").kernel),
                                  rgb.sum(axis=2, keepdims=True))
    for ours, theirs in (("encoder3_block5_2_conv", "stack2_block5_2_conv"), ("encoder4_block0_0_conv",
                         "stack3_block0_0_conv"), ("encoder2_block3_1_bn", "stack1_block3_1_bn")):
        assert resnet.source_name(ours) == theirs
        for a, b in zip(model.get_layer(ours).weights, backbone.get_layer(theirs).weights, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=ours)
    np.testing.assert_array_equal(np.asarray(model.get_layer("decoder1_2_conv").kernel), before)  # decoder untouched


def test_depth_beyond_resnet34_keeps_its_centre_block_random(resnet34_source):
    from segnet.models.encoders import fetch_weights

    backbone, d = resnet34_source
    cfg = _resnet64_cfg(d / "resnet34.weights.h5", depth=4)
    model = build_model(cfg)
    centre = np.asarray(model.get_layer("encoder5_block0_1_conv").kernel).copy()
    assert fetch_weights(cfg)(model) == len([layer for layer in backbone.layers if layer.weights])
    np.testing.assert_array_equal(np.asarray(model.get_layer("encoder5_block0_1_conv").kernel), centre)


def test_a_file_of_another_layout_is_one_config_line(tmp_path):
    from segnet.models.encoders import fetch_weights

    bad = tmp_path / "other.weights.h5"
    bad.write_text("not weights")
    with pytest.raises(ConfigError, match=r"model.encoder_weights: .*other.weights.h5: not ResNet-34") as err:
        fetch_weights(_resnet64_cfg(bad))
    assert "\n" not in str(err.value)


@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")  # a checkpoint before any step
def test_new_runs_load_the_weights_and_resumed_runs_keep_their_checkpoint(tmp_path, monkeypatch):
    from segnet import train as train_mod

    cfg = load_config(None, ["model.encoder=resnet", "model.filters=4", "model.depth=2", "data.size=101"])
    spec, _ = resolve_decoder(cfg.model.decoder, cfg.decoder)
    strategy, filled = tf.distribute.get_strategy(), []
    run_stub = NS(log_params=lambda *a: None, log_text=lambda *a: None, log_metrics=lambda *a, **k: None,
                  metric_history=lambda key: [])  # what _build_or_restore asks of an MLflow run

    def fetched(_cfg):
        def apply(model):
            filled.append(model)
            return 0
        return apply

    # A run meant to resume that found nothing to resume (no encoder_init) fetches them for its new model.
    monkeypatch.setattr(train_mod, "encoder_weights", fetched)
    model, state = train_mod._build_or_restore(cfg, run_stub, tmp_path, spec, strategy, None)
    assert filled == [model]
    monkeypatch.setattr(train_mod, "encoder_weights", lambda _cfg: pytest.fail("a resumed run fetched weights"))
    again, _ = train_mod._build_or_restore(cfg, run_stub, tmp_path, spec, strategy, state,
                                           encoder_init=fetched(cfg))
    assert filled == [model]  # the checkpoint, not the weights
    for a, b in zip(again.weights, model.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_imagenet_without_network_is_one_line_before_any_run(tiny_synth, tmp_path):
    """No network (HF_HUB_OFFLINE, an empty cache): exit 2, one ``segnet: error:`` line, no run created."""
    env = segnet_env(tmp_path, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    for name in ("TF_CPP_MIN_LOG_LEVEL", "SEGNET_TF_LOG_DEFAULT"):
        env.pop(name, None)
    proc = run(["train", *tiny_overrides(tiny_synth, epochs=1), "model.encoder=resnet", "model.filters=64",
                "model.encoder_weights=imagenet"], tmp_path, env=env, timeout=300)
    report = f"exit {proc.returncode}\nstdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-3000:]}"
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, report
    assert len(lines) == 1 and lines[0].startswith("segnet: error: model.encoder_weights=imagenet: cannot download")
    assert "internet" in lines[0], report
    assert run_statuses(tmp_path) == {}, report  # the error came before any MLflow run was created
    assert not any((tmp_path / "runs").glob("*/*")), report

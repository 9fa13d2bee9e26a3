"""Every registered decoder: builds at odd and even sizes, trains (gradients), saves and reloads;
the custom operators do exactly what they claim; the registry validates names and options, finds a new
decoder file on its own, and its overlap numbers agree with the layers."""

from __future__ import annotations

import itertools
import pkgutil
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from types import SimpleNamespace as NS

import keras
import numpy as np
import pytest
import tensorflow as tf

import segnet.models.decoders as decoders_pkg
from segnet import evaluate, paths
from segnet.config import ModelConfig
from segnet.errors import ConfigError
from segnet.models import DECODERS, build_model, resolve_decoder
from segnet.models import layers as L  # noqa: N812

from .procs import segnet_env, tiny_overrides

NAMES = list(DECODERS)


def _option_sets(spec):
    """Every combination of a decoder's option choices (the default for options without choices)."""
    keys = list(spec.options)
    values = [spec.options[k].choices or (spec.options[k].default,) for k in keys]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]


CASES = [(name, opts) for name in NAMES for opts in _option_sets(DECODERS[name])]


def _cfg(decoder, size=64, depth=4, filters=4, options=None, residual=False):
    return NS(
        data=NS(size=size),
        model=NS(decoder=decoder, depth=depth, filters=filters, residual=residual, dropout=0.0),
        decoder=dict(options or {}),
    )


def _images(n, size, seed=0):
    return np.random.default_rng(seed).random((n, size, size, 1), dtype=np.float32)


def test_registry_holds_every_decoder_module_in_listing_order():
    modules = {m.name for m in pkgutil.iter_modules(decoders_pkg.__path__) if not m.name.startswith("_")}
    assert {DECODERS.modules[name].rsplit(".", 1)[-1] for name in DECODERS} == modules
    assert NAMES == sorted(NAMES, key=lambda n: (DECODERS[n].order, n))
    assert NAMES[0] == ModelConfig.decoder  # the default decoder lists first (the ablation's reference)
    for name, spec in DECODERS.items():
        assert spec.name == name
        assert spec.description and "\n" not in spec.description
        for key, opt in spec.options.items():
            assert opt.choices is not None or opt.type is not None, key
            assert resolve_decoder(name, {key: opt.default})[1][key] == opt.default
    assert DECODERS["maxunpool"].needs_indices and not DECODERS["maxunpool"].supports_jit


def test_variant_labels_are_the_ones_runs_and_ablations_use():
    from segnet.config import load_config

    labels = {
        (): "transposed_k3",
        ("decoder.kernel_size=4",): "transposed_k4",
        ("model.decoder=upsampling", "decoder.interpolation=bilinear"): "upsampling_bilinear",
        ("model.decoder=upsampling",): "upsampling_nearest",
        ("model.decoder=pixel_shuffle",): "pixel_shuffle_icnr",
        ("model.decoder=pixel_shuffle", "decoder.icnr=false"): "pixel_shuffle_noicnr",
        ("model.decoder=bilinear_additive", "decoder.groups=8"): "bilinear_additive_g8",
        ("model.decoder=maxunpool",): "maxunpool",
        ("model.decoder=bed_of_nails",): "bed_of_nails",
    }
    for overrides, label in labels.items():
        assert load_config(None, list(overrides)).variant() == label
    for name, opts in CASES:  # every registered variant has a label of its own
        assert DECODERS[name].label(opts).startswith(name)
    assert len({DECODERS[n].label(o) for n, o in CASES}) == len(CASES)


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
    for name in DECODERS:
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


# ----------------------------------------------------------------------------- overlap: one definition


def _ones_response(name, options):
    """The ``decoder1_up`` layer with every kernel weight 1 and every bias 0, fed a constant map of ones:
    each output pixel then holds (channels x) the number of kernel taps that reach it."""
    model = build_model(_cfg(name, size=32, depth=1, filters=8, options=options))
    up = model.get_layer("decoder1_up")
    for w in up.weights:
        w.assign(np.zeros(w.shape) if "bias" in w.path else np.ones(w.shape))
    inputs = up.input if isinstance(up.input, list) else [up.input]
    ones = tf.ones((1, 16, 16, inputs[0].shape[-1]))
    if DECODERS[name].needs_indices:  # a constant map: the argmax is the top-left of each cell
        out = up([ones, L.MaxPoolWithArgmax()(tf.ones((1, 32, 32, inputs[1].shape[-1])))[1]])
    else:
        out = up(ones)
    return np.asarray(out)[0, 12:20, 12:20, 0]  # interior, 4 whole 2x2 periods


@pytest.mark.parametrize("name,options", CASES, ids=[f"{n}-{'-'.join(map(str, o.values()))}" for n, o in CASES])
def test_overlap_printed_logged_and_layer_agree(name, options):
    """``segnet shapes`` prints, training logs and the layer itself show the same overlap unevenness."""
    spec = DECODERS[name]
    taps = spec.taps(options)
    assert taps.shape == (2, 2) and taps.max() > 0
    logged = evaluate.overlap_unevenness(spec, options)
    assert logged == spec.unevenness(options) == pytest.approx((taps.max() - taps.min()) / taps.max())
    printed = spec.overlap(options)
    assert f"unevenness (max-min)/max = {logged:.2f}" in printed
    assert all(" ".join(f"{v:2d}" for v in row) in printed for row in taps)
    # The layer: tap counts per phase of the 2x2 period (up to a constant factor: the channels).
    response = _ones_response(name, options)
    period = response[:2, :2]
    np.testing.assert_allclose(np.tile(period, (4, 4)), response, atol=1e-4)
    np.testing.assert_allclose(np.sort(period.ravel()) / period.max(), np.sort(taps.ravel()) / taps.max(), atol=1e-5)


def test_the_known_overlap_values():
    values = {n: DECODERS[n].unevenness(DECODERS[n].defaults()) for n in NAMES}
    assert values["transposed"] == 0.75 and values["bed_of_nails"] == 0.75 and values["maxunpool"] == 1.0
    assert DECODERS["transposed"].unevenness({"kernel_size": 4}) == 0.0
    assert values["upsampling"] == values["pixel_shuffle"] == values["bilinear_additive"] == 0.0


# ----------------------------------------------------------------------------- a new decoder = one file

_NEW_DECODER = """
    \"\"\"A decoder written by a test: nearest resize then conv 3x3, in a file of its own.\"\"\"

    from segnet.models.decoders._base import DecoderSpec, Option, even_taps


    def make_block(interpolation="nearest"):
        from segnet.models.blocks import decoder_block
        from segnet.models.layers import ResizeConv2D

        return decoder_block(lambda *, filters, skip_channels, name: ResizeConv2D(filters, 3, name=name,
                                                                                  interpolation=interpolation))


    SPEC = DecoderSpec(
        name="{name}", description="test decoder: resize then conv 3x3", needs_indices=False, supports_jit=True,
        options={{"interpolation": Option("nearest", choices=("nearest", "bilinear"), label="")}},
        make_block=make_block, overlap_taps=even_taps(9), overlap_note=lambda options: "resize, then conv 3x3",
    )
"""

_CHECK = """
import sys
from pathlib import Path

import segnet
from segnet.ablate import plan
from segnet.config import load_config
from segnet.errors import ConfigError
from segnet.models.decoders import DECODERS

name, ablation, copy = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
assert Path(segnet.__file__).resolve().is_relative_to(copy.resolve()), segnet.__file__  # the copy, not the checkout
assert list(DECODERS)[-1] == name, list(DECODERS)  # order 100: after the built-in ones
cfg = load_config(None, [f"model.decoder={name}", "decoder.interpolation=bilinear"])
assert cfg.variant() == f"{name}_bilinear", cfg.variant()
try:
    load_config(None, [f"model.decoder={name}", "decoder.interpolation=bicubic"])
    raise SystemExit("bad option accepted")
except ConfigError as e:
    assert "nearest, bilinear" in str(e), e
p = plan(ablation)
assert [c.cfg.model.decoder for c in p.children] == ["transposed", name], p.children
print("checked", name)
"""


def _checkout_copy(root: Path) -> Path:
    """The package, its configs and pyproject.toml copied to ``root`` (so ``segnet.paths.ROOT`` is ``root``).
    A process started in ``root`` imports this copy: the checkout, which other processes (a background
    training, a parallel test run) import, is never written to."""
    shutil.copytree(Path(decoders_pkg.__file__).parents[2], root / "segnet",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(paths.CONFIGS, root / "configs")
    shutil.copy2(paths.ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


def test_a_decoder_file_is_picked_up_without_touching_another_file(tiny_synth, tmp_path):
    """Write a decoder module into the decoders package of a copy of the checkout, then: config
    validation, variant label, an ablation plan, ``segnet shapes`` and a one-epoch ``segnet train`` (the
    CLI, run in the copy) all know it; no other file was edited."""
    name = f"zz_test_{uuid.uuid4().hex[:8]}"
    copy = _checkout_copy(tmp_path / "checkout")
    (copy / "segnet" / "models" / "decoders" / f"{name}.py").write_text(textwrap.dedent(_NEW_DECODER.format(name=name)))
    ablation = tmp_path / "ablation.yaml"
    ablation.write_text(f"variants:\n  ref: {{model.decoder: transposed}}\n  new: {{model.decoder: {name}}}\n")
    env = segnet_env(tmp_path)

    def segnet(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=copy, timeout=600)

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(3) as pool:  # three independent processes, at once
        checked, shapes, trained = pool.map(lambda args: segnet(*args), [
            ("-c", _CHECK, name, str(ablation), str(copy)),
            ("-m", "segnet", "shapes", f"model.decoder={name}", "model.depth=3", "model.filters=4"),
            ("-m", "segnet", "train", *tiny_overrides(tiny_synth, epochs=1), f"model.decoder={name}")])
    assert checked.returncode == 0 and f"checked {name}" in checked.stdout, checked.stderr[-3000:]
    assert shapes.returncode == 0, shapes.stderr[-3000:]
    assert f"unet_{name}" in shapes.stdout and "unevenness (max-min)/max = 0.00" in shapes.stdout
    assert trained.returncode == 0, (trained.stdout + trained.stderr)[-3000:]
    assert "run_id:" in trained.stdout + trained.stderr
    assert not (Path(decoders_pkg.__file__).parent / f"{name}.py").exists(), "the checkout's package was written to"

"""The GPU check (``make gpu-check``): what only a GPU can show, each test in seconds on an H100.

* **mixed_float16 training** of every decoder at the default size, plus the heads (scSE, hypercolumn, deep
  supervision and its empty-mask gate) and the resnet encoder, compiled as training compiles them (Keras
  then picks XLA for the models whose layers all support it): finite losses and weights, the weights move,
  float32 variables and logits, the saved model reloads to the same predictions;
* **every custom layer** in float16 on the GPU (the cases of tests/test_layers.py through the shared
  harness): argmax pooling and unpooling, fused batch norm, the upsamplers, the gate;
* **XLA**: Keras' ``jit_compile="auto"`` compiles exactly the decoders whose layers declare
  ``supports_jit``, and for those an XLA forward pass matches the plain one;
* **MirroredStrategy over every visible GPU**: ``segnet train`` end to end with mixed precision;
* **throughput of the default model** with segnet's training pipeline (``segnet.bench``): train (what
  ``fit`` runs), fit-free step and inference images/s and the pipeline alone, in float32 and mixed_float16,
  printed as README rows and written to ``bench/gpu-check-<precision>.{csv,json}``; the pipeline must
  outrun training (it does not starve the GPU).

Without a GPU every test skips with one reason. ``SEGNET_GPU_CHECK_ON_CPU=1`` runs them on the CPU anyway
(slowly), to check the check itself on a machine without one.
"""

from __future__ import annotations

import contextlib
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from segnet import paths
from segnet.config import load_config
from segnet.models.decoders import DECODERS
from tests.procs import run, run_statuses, tiny_overrides
from tests.test_layers import CASES

ON_CPU = os.environ.get("SEGNET_GPU_CHECK_ON_CPU") == "1"
GPUS = tf.config.list_physical_devices("GPU")
DEVICE = "/GPU:0" if GPUS else "/CPU:0"
for _gpu in GPUS:  # this process must leave GPU memory to the `segnet train` it starts
    with contextlib.suppress(RuntimeError):  # the runtime already started (other tests ran first)
        tf.config.experimental.set_memory_growth(_gpu, True)

if not GPUS and not ON_CPU:  # one skip, one reason line, for the whole check
    pytest.skip("no GPU visible to TensorFlow (SEGNET_GPU_CHECK_ON_CPU=1 runs the GPU check on the CPU)",
                allow_module_level=True)
pytestmark = pytest.mark.gpu

# The model variants that hold every custom layer: each decoder, the heads (scSE, hypercolumn, deep
# supervision with its EmptyGate), the resnet encoder (its argmax pooling feeds maxunpool).
MODEL_CASES = {
    **{name: [f"model.decoder={name}"] for name in DECODERS},
    "heads": ["model.scse=true", "model.hypercolumn=true", "model.deep_supervision=true"],
    "resnet_maxunpool": ["model.encoder=resnet", "model.decoder=maxunpool"],
}


@pytest.fixture
def mixed_float16():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _default_cfg(overrides: list[str]):
    """The model of configs/base.yaml (size 112, depth 4, 16 filters, batch 32) with ``overrides``."""
    return load_config(paths.BASE_CONFIG, overrides)


def _compiled(cfg):
    """The model of ``cfg``, compiled as training compiles it (``jit_compile`` left to Keras: "auto")."""
    from segnet.models import build_model
    from segnet.train import compile_model

    model = build_model(cfg)
    compile_model(model, keras.optimizers.Adam(cfg.train.lr), cfg.train.loss)
    return model


def _batches(cfg, steps: int):
    """``steps`` training batches of segnet's pipeline (augmented synthetic images), and the images."""
    from segnet.bench.models import synthetic_arrays
    from segnet.data.pipeline import make_dataset

    images, masks = synthetic_arrays(steps * cfg.train.batch_size)
    return make_dataset(images, masks, cfg, training=True), images


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_mixed_float16_trains_every_decoder_and_layer(case, mixed_float16, tmp_path):
    from segnet.data.pipeline import to_network
    from segnet.inference import predict_logits
    from segnet.models import heads

    cfg = _default_cfg([*MODEL_CASES[case], "train.precision=mixed_float16"])
    with tf.device(DEVICE):
        model = _compiled(cfg)
        start = [np.asarray(w).copy() for w in model.trainable_weights]
        ds, images = _batches(cfg, steps=4)  # four: dynamic loss scaling may skip the first steps
        history = model.fit(heads.targets(model, ds), verbose=0).history
        assert all(np.isfinite(v).all() for v in history.values()), history
        assert any(layer.compute_dtype == "float16" for layer in model.layers)
        assert all(keras.backend.standardize_dtype(w.dtype) == "float32" for w in model.weights)
        assert all(np.isfinite(np.asarray(w)).all() for w in model.weights)
        assert any(not np.array_equal(np.asarray(w), s) for w, s in zip(model.trainable_weights, start, strict=True))
        x = to_network(images[:8], cfg.data.size, cfg.data.resize_mode)
        logits = predict_logits(model, x, 8)
        assert logits.dtype == np.float32 and np.isfinite(logits).all()
        model.save(tmp_path / "model.keras")
        again = keras.models.load_model(tmp_path / "model.keras")
        np.testing.assert_allclose(predict_logits(again, x, 8), logits, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", sorted(CASES))
def test_custom_layer_trains_and_runs_float16_on_the_device(name):
    from segnet.models import CUSTOM_OBJECTS
    from tests.layer_harness import check_mixed_float16, check_training_step

    for case in CASES[name]:
        inputs = case.inputs()
        data = [np.asarray(a) for a in (inputs if isinstance(inputs, list) else [inputs])]
        with tf.device(DEVICE):
            check_training_step(CUSTOM_OBJECTS[name], case.init_kwargs, data, differentiable=case.differentiable)
            check_mixed_float16(CUSTOM_OBJECTS[name], case.init_kwargs, data, case.output_dtypes)


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_xla_compiles_exactly_the_decoders_that_declare_it(name):
    from segnet.data.pipeline import to_network

    spec = DECODERS[name]
    cfg = _default_cfg([f"model.decoder={name}"])
    with tf.device(DEVICE):
        model = _compiled(cfg)
        # Keras' "auto": XLA on a GPU when every layer supports it (never on a CPU-only machine).
        assert model.jit_compile == (spec.supports_jit and bool(GPUS)), (name, spec.supports_jit)
        if not spec.supports_jit:
            return
        model.jit_compile = True  # on the CPU too, when the check runs there
        ds, images = _batches(cfg, steps=2)
        assert all(np.isfinite(v).all() for v in model.fit(ds, verbose=0).history.values())
        x = tf.constant(to_network(images[:8], cfg.data.size, cfg.data.resize_mode))
        xla = tf.function(lambda t: model(t, training=False), jit_compile=True)(x)
        np.testing.assert_allclose(np.asarray(xla), np.asarray(model(x, training=False)), rtol=1e-4, atol=1e-4)


def test_mirrored_strategy_over_every_gpu_trains_end_to_end(tiny_synth, tmp_path):
    from segnet.train import make_strategy

    assert make_strategy("mirrored").num_replicas_in_sync == max(1, len(GPUS))
    out = run(["train", *tiny_overrides(tiny_synth), "train.strategy=mirrored", "train.precision=mixed_float16"],
              tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert list(run_statuses(tmp_path).values()) == ["FINISHED"]


@pytest.mark.parametrize("precision", ["float32", "mixed_float16"])
def test_throughput_of_the_default_model_with_the_training_pipeline(precision):
    from segnet.bench import Settings, bench, default_config

    default = default_config().model.decoder
    settings = Settings(rounds=3, warmup=2, train_steps=10, step_steps=10, infer_steps=10, n_images=1024,
                        pipeline_batches=16, peak_repeats=3, memory="inprocess")
    keras.mixed_precision.set_global_policy(precision)  # every model the bench builds (the baseline too)
    try:
        summary = bench(names=[default], settings=settings, log_mlflow=False,
                        out=paths.ROOT / "bench" / f"gpu-check-{precision}")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    row = next(r for r in summary["rows"] if r["model"] == default)
    pipeline = summary["findings"]["pipeline_images_per_s"]
    device = (tf.config.experimental.get_device_details(GPUS[0]).get("device_name", "GPU") if GPUS
              else summary["environment"]["cpu"])
    print(f"\nREADME row (bench/gpu-check-{precision}.csv has every number):\n"
          "| device | model | precision | train images/s | fit-free step images/s | infer images/s | "
          "pipeline images/s | train x baseline |\n|---|---|---|---|---|---|---|---|\n"
          f"| {device} ({len(GPUS)} GPU, TensorFlow {tf.__version__}) | {default} | {precision} | "
          f"{row['train_images_per_s']:,.0f} | {row['step_images_per_s']:,.0f} | {row['infer_images_per_s']:,.0f} | "
          f"{pipeline:,.0f} | {row['train_x_baseline']:.2f} |")
    assert pipeline > row["train_images_per_s"], "the input pipeline alone is slower than training: it starves the GPU"

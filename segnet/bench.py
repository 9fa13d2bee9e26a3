"""Benchmark: speed, memory and FLOP/s of every registered decoder against a baseline Keras U-Net.

``python -m segnet bench [--quick] [--out FILE]`` (``make bench``) runs, in one process:

* **machine peak**, measured in the same run: a float32 matmul (2048³) and a 3x3 convolution
  (32×56×56×64 → 64, 'same'), each the best of several repeats, in GFLOP/s;
* **models**: every decoder of :data:`segnet.models.decoders.DECODERS` at ``configs/base.yaml`` defaults
  (size 112 reflect-pad, depth 4, filters 16, batch 32, Adam + the configured loss), and
  ``baseline_keras_unet``: the plain Keras U-Net of the well-known TGS tutorial (input resized to
  128x128, 16 filters doubling to 256, depth 4, two conv-BN-ReLU per block, 3x3 stride-2
  Conv2DTranspose, dropout 0.1, sigmoid, Adam + binary cross-entropy, ``metrics=["accuracy"]``),
  written here as the comparator;
* **the data pipeline** on its own (``segnet.data.pipeline.make_dataset``, training mode, images/s).

What is timed, per model (all after a warm-up that traces every function):

``train`` (segnet's number)
    how segnet trains: ``model.compile(Adam, loss)`` and Keras' own compiled train function (what
    ``model.fit`` runs per step) pulling batches from the model's ``tf.data`` pipeline through one
    persistent iterator; the pipeline's prefetch threads run concurrently, as in ``fit``. For the
    baseline the pipeline is Keras' own array adapter over the pre-resized 128x128 arrays (what
    ``model.fit(X, y, batch_size=32)`` does). ``fit`` itself adds per-epoch setup and callbacks only.
``step`` (fit-free)
    a ``tf.function`` train step (GradientTape, same loss, Adam) on one fixed in-memory batch: the
    model's compute alone. A big gap between ``train`` and ``step`` is data-path cost.
``infer``
    a ``tf.function`` forward pass (``training=False``) on a fixed batch of 64.

Rounds interleave the models (the order rotates and reverses from round to round), so drift of the
host hits all alike; each number is reported as the **median** over rounds and the **best** round.
Ratios to the baseline (``*_x_baseline``) are the median over rounds of the ratio within the round.

FLOPs are counted analytically from the forward graph (batch 1, traced): 2×MACs of every Conv2D,
transposed conv (``Conv2DBackpropInput``), depthwise conv and (batch) matmul; element-wise ops,
pooling, BN and scatters are not counted. Training ≈ 3× forward (forward + input and weight grads).

Memory (``peak_rss_mb``): measured per model in a **fresh subprocess** that imports TensorFlow, builds
the model and runs two training steps and one inference batch; ``peak_rss_mb`` is that process's peak
RSS (``ru_maxrss``) and ``rss_growth_mb`` the peak minus its RSS right after importing TensorFlow (the
model's own cost). In one process freed memory is reused and RSS never shrinks, so per-model peaks
cannot be separated there; ``--quick`` therefore reports ``rss_growth_mb`` measured *in process*
(``VmHWM`` reset through ``/proc/self/clear_refs`` before the model's warm-up: a lower bound) and
leaves the subprocess numbers to the full run.

Levers (``--levers``): the default model step by step from the tutorial's setting to segnet's, in one
interleaved run with the baseline, so each lever's ratio is measured in the same run:
``keras_bn_resize128`` (the default decoder, input resized to 128, Keras 3's own BatchNormalization),
``keras_bn_pad112`` (native resolution: 101 reflect-padded to 112) and the default model itself
(112, :class:`~segnet.models.layers.FusedBatchNormalization`). Outputs go to ``bench/levers.*``.

Outputs: ``bench/results.csv`` and ``.json`` (or ``--out``), a table on stdout, and an MLflow run in the
experiment ``segnet-bench`` (params, per-model metrics ``<model>.<metric>``, the CSV and JSON, a bar chart).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from segnet import paths

BASELINE = "baseline_keras_unet"
EXPERIMENT = "segnet-bench"
DEFAULT_OUT = paths.ROOT / "bench" / "results"
LEVERS_OUT = paths.ROOT / "bench" / "levers"
# lever rows: the default decoder with config overrides and Keras' own (unfused) BatchNormalization
LEVERS = {
    "keras_bn_resize128": ("data.size=128", "data.resize_mode=resize"),
    "keras_bn_pad112": (),
}
INFER_BATCH = 64
IMG = 101


@dataclass(frozen=True)
class Settings:
    """How much to measure. ``QUICK`` keeps every model but cuts steps, rounds and images."""

    rounds: int = 5  # interleaved rounds (median and best over these)
    warmup: int = 1  # untimed fit-path steps per model before the first round (after the tracing step)
    train_steps: int = 2  # fit-path steps per model per round
    step_steps: int = 1  # fit-free steps per model per round (0: not measured, saves a trace per model)
    infer_steps: int = 2  # inference batches per model per round
    n_images: int = 512  # synthetic 101x101 images behind the pipelines
    pipeline_batches: int = 8  # batches timed per round for the pipeline alone
    peak_repeats: int = 5
    memory: str = "subprocess"  # subprocess | inprocess
    baseline_size: int = 128  # the baseline's input side and first-level filters (the tutorial's)
    baseline_filters: int = 16


FULL = Settings()
QUICK = Settings(rounds=3, warmup=0, train_steps=1, step_steps=0, infer_steps=1, n_images=128,
                 pipeline_batches=3, peak_repeats=3, memory="inprocess")


# ------------------------------------------------------------------------------------- environment


def _quiet_tf() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _rss_mb() -> float:
    return _status_field("VmRSS")


def _hwm_mb() -> float:
    return _status_field("VmHWM")


def _status_field(name: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    if name == "VmHWM":
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return float("nan")


def _reset_hwm() -> bool:
    """Reset the peak-RSS high-water mark of this process (Linux >= 4.0); False when not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ------------------------------------------------------------------------------------------- data


def synthetic_arrays(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` salt-like 101x101 images in [0,1] and {0,1} masks, (n, 101, 101, 1) float32 each."""
    try:
        from segnet.data.synthetic import synth_image

        pairs = [synth_image(np.random.default_rng([seed, 0, i])) for i in range(n)]
        images = np.stack([np.asarray(p[0], np.float32).reshape(IMG, IMG) for p in pairs])
        masks = np.stack([np.asarray(p[1], np.float32).reshape(IMG, IMG) for p in pairs])
        if images.max() > 1.5:
            images = images / 255.0
        masks = (masks > 0.5).astype(np.float32)
    except Exception:  # the generator is optional here: smooth random fields serve as well for timing
        rng = np.random.default_rng(seed)
        f = np.fft.rfft2(rng.standard_normal((n, IMG, IMG)))
        ky, kx = np.fft.fftfreq(IMG)[:, None], np.fft.rfftfreq(IMG)[None, :]
        field_ = np.fft.irfft2(f * np.exp(-(ky**2 + kx**2) * 400.0), s=(IMG, IMG))
        field_ = (field_ - field_.mean(axis=(1, 2), keepdims=True)) / (field_.std(axis=(1, 2), keepdims=True) + 1e-8)
        images = np.clip(0.5 + 0.15 * field_ + 0.05 * rng.standard_normal((n, IMG, IMG)), 0, 1)
        masks = (field_ > rng.uniform(-0.5, 2.5, size=(n, 1, 1))).astype(np.float32)
    return images[..., None].astype(np.float32), masks[..., None].astype(np.float32)


def segnet_dataset(images: np.ndarray, masks: np.ndarray, cfg):
    """segnet's training pipeline (``segnet.data.pipeline.make_dataset``), repeated forever."""
    import tensorflow as tf

    try:
        from segnet.data.pipeline import make_dataset
    except ImportError:  # not written yet: a vectorised stand-in (reflect-pad, flip), labelled as such
        make_dataset = _standin_dataset
    ds = make_dataset(images, masks, cfg, training=True)
    if int(ds.cardinality()) != int(tf.data.INFINITE_CARDINALITY):
        ds = ds.repeat()
    return ds


def _standin_dataset(images, masks, cfg, training=True):
    import tensorflow as tf

    size, bs = cfg.data.size, cfg.train.batch_size
    lo = (size - IMG) // 2
    pad = [[0, 0], [lo, size - IMG - lo], [lo, size - IMG - lo], [0, 0]]

    def prep(x, y):
        x, y = tf.pad(x, pad, mode="REFLECT"), tf.pad(y, pad, mode="REFLECT")
        flip = tf.random.uniform([tf.shape(x)[0], 1, 1, 1]) < 0.5
        return tf.where(flip, x[:, :, ::-1], x), tf.where(flip, y[:, :, ::-1], y)

    ds = tf.data.Dataset.from_tensor_slices((images, masks)).shuffle(len(images)).batch(bs, drop_remainder=True)
    return ds.map(prep, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def pipeline_name() -> str:
    try:
        import segnet.data.pipeline  # noqa: F401

        return "segnet.data.pipeline.make_dataset"
    except ImportError:
        return "bench stand-in (segnet.data.pipeline missing)"


def baseline_arrays(images: np.ndarray, masks: np.ndarray, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """The tutorial's preprocessing: every image resized to 128x128 once, up front (masks thresholded)."""
    import tensorflow as tf

    x = tf.image.resize(images, (size, size), method="bilinear").numpy()
    y = (tf.image.resize(masks, (size, size), method="bilinear").numpy() > 0.5).astype(np.float32)
    return x.astype(np.float32), y


def baseline_dataset(x: np.ndarray, y: np.ndarray, batch_size: int = 32):
    """What ``model.fit(x, y, batch_size=32, shuffle=True)`` feeds the step: Keras' array adapter."""
    import tensorflow as tf

    try:
        from keras.src.trainers.data_adapters.array_data_adapter import ArrayDataAdapter

        ds = ArrayDataAdapter(x, y, batch_size=batch_size, shuffle=True).get_tf_dataset()
    except Exception:  # private API moved: the public equivalent
        ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x)).batch(batch_size, drop_remainder=True)
    return ds.repeat().prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------------------- baseline


def baseline_unet(size: int = 128, n_filters: int = 16, dropout: float = 0.1, batchnorm: bool = True):
    """The TGS tutorial's Keras U-Net (``get_unet``): sigmoid output, compiled with Adam + BCE + accuracy."""
    import keras
    from keras import layers

    def conv2d_block(x, filters):
        for _ in range(2):
            x = layers.Conv2D(filters, 3, kernel_initializer="he_normal", padding="same")(x)
            if batchnorm:
                x = layers.BatchNormalization()(x)
            x = layers.Activation("relu")(x)
        return x

    inp = keras.Input((size, size, 1), name="img")
    skips, x = [], inp
    for level in range(4):
        c = conv2d_block(x, n_filters * 2**level)
        skips.append(c)
        x = layers.MaxPooling2D((2, 2))(c)
        x = layers.Dropout(dropout * 0.5 if level == 0 else dropout)(x)
    x = conv2d_block(x, n_filters * 16)
    for level in reversed(range(4)):
        x = layers.Conv2DTranspose(n_filters * 2**level, (3, 3), strides=(2, 2), padding="same")(x)
        x = layers.concatenate([x, skips[level]])
        x = layers.Dropout(dropout)(x)
        x = conv2d_block(x, n_filters * 2**level)
    out = layers.Conv2D(1, (1, 1), activation="sigmoid")(x)
    model = keras.Model(inp, out, name=BASELINE)
    model.compile(optimizer=keras.optimizers.Adam(), loss="binary_crossentropy", metrics=["accuracy"])
    return model


# ------------------------------------------------------------------------------------------ FLOPs


def _op_macs(op) -> float:
    """Multiply-accumulates of one graph op (conv, transposed conv, depthwise conv, matmul); 0 otherwise."""

    def shape(t):
        s = t.shape
        return None if s.rank is None or None in s.as_list() else s.as_list()

    t = op.type
    try:
        if t == "Conv2D":
            out, k = shape(op.outputs[0]), shape(op.inputs[1])
            return float(np.prod(out)) * k[0] * k[1] * k[2] if out and k else 0.0
        if t == "Conv2DBackpropInput":  # the forward op of a transposed convolution
            k, dy = shape(op.inputs[1]), shape(op.inputs[2])
            return float(np.prod(dy)) * k[0] * k[1] * k[2] if dy and k else 0.0
        if t == "DepthwiseConv2dNative":
            out, k = shape(op.outputs[0]), shape(op.inputs[1])
            return float(np.prod(out)) * k[0] * k[1] if out and k else 0.0
        if t in ("MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3"):
            a, out = shape(op.inputs[0]), shape(op.outputs[0])
            if not (a and out):
                return 0.0
            adj = op.get_attr("transpose_a") if t == "MatMul" else op.get_attr("adj_x")
            inner = a[-2] if adj else a[-1]
            return float(np.prod(out)) * inner
    except (ValueError, TypeError, IndexError):
        return 0.0
    return 0.0


def _graph_macs(graph, seen: set | None = None) -> float:
    seen = set() if seen is None else seen
    total = 0.0
    for op in graph.get_operations():
        total += _op_macs(op)
        if op.type in ("PartitionedCall", "StatefulPartitionedCall"):
            try:
                name = op.get_attr("f").name
                if name in seen:
                    continue
                seen.add(name)
                fn = graph._get_function(name)
                sub = getattr(fn, "graph", None)
                if sub is not None:
                    total += _graph_macs(sub, seen)
            except Exception:  # noqa: BLE001 - best effort: nested functions are rare in Keras 3 models
                pass
    return total


def forward_flops(model, input_shape: Sequence[int]) -> float:
    """FLOPs (2×MACs of conv/transposed conv/dense) of one forward pass on one image."""
    import tensorflow as tf

    fn = tf.function(lambda x: model(x, training=False))
    cf = fn.get_concrete_function(tf.TensorSpec([1, *input_shape], tf.float32))
    return 2.0 * _graph_macs(cf.graph)


# ------------------------------------------------------------------------------------------ peaks


def _best_and_median(fn: Callable[[], object], flops: float, repeats: int) -> tuple[float, float]:
    fn()  # warm-up: trace and create oneDNN primitives
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        rates.append(flops / (time.perf_counter() - t0) / 1e9)
    return max(rates), statistics.median(rates)


def peak_matmul(repeats: int = 5, n: int = 2048) -> tuple[float, float]:
    """(best, median) GFLOP/s of a float32 n×n matmul (4 chained per call)."""
    import tensorflow as tf

    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n)) / n**0.5

    @tf.function
    def f(a, b):
        for _ in range(4):
            a = tf.linalg.matmul(a, b)
        return tf.reduce_sum(a[:1, :1])

    return _best_and_median(lambda: f(a, b).numpy(), 4 * 2.0 * n**3, repeats)


def peak_conv(repeats: int = 5, batch: int = 32, hw: int = 56, cin: int = 64, cout: int = 64,
              backward: bool = False) -> tuple[float, float]:
    """(best, median) GFLOP/s of a 3x3 'same' float32 convolution (forward, or forward + both grads)."""
    import tensorflow as tf

    x = tf.random.normal((batch, hw, hw, cin))
    k = tf.Variable(tf.random.normal((3, 3, cin, cout)) * 0.05)
    macs = batch * hw * hw * cin * cout * 9

    if not backward:
        @tf.function
        def f():
            y = x
            for _ in range(2):
                y = tf.nn.conv2d(y, k, 1, "SAME") if cin == cout else tf.nn.conv2d(x, k, 1, "SAME")
            return tf.reduce_sum(y[:1, :1, :1, :1])

        return _best_and_median(lambda: f().numpy(), 2 * 2.0 * macs, repeats)

    xv = tf.Variable(x)

    @tf.function
    def g():
        with tf.GradientTape() as tape:
            y = tf.nn.conv2d(xv, k, 1, "SAME")
            s = tf.reduce_sum(y * y)
        dx, dk = tape.gradient(s, [xv, k])
        return tf.reduce_sum(dx[:1, :1, :1, :1]) + tf.reduce_sum(dk[:1, :1, :1, :1])

    return _best_and_median(lambda: g().numpy(), 3 * 2.0 * macs, repeats)


def measure_peaks(repeats: int, previous: dict | None = None) -> dict:
    """Best GFLOP/s of the matmul and conv microbenchmarks (kept from ``previous`` when that was better):
    ``conv_gflops`` (3x3, 64→64 channels at 56x56, batch 32: the reference for "% of conv peak"),
    ``conv16x112_gflops`` (16→16 at 112x112: segnet's first level), ``conv_train_gflops`` (forward and
    both gradients of the 64-channel conv) and ``matmul_gflops`` (2048³)."""
    mm_best, mm_med = peak_matmul(repeats)
    cv_best, cv_med = peak_conv(repeats)
    cvs_best, _ = peak_conv(repeats, hw=112, cin=16, cout=16)
    cvb_best, _ = peak_conv(repeats, backward=True)
    now = {"matmul_gflops": mm_best, "matmul_gflops_median": mm_med, "conv_gflops": cv_best,
           "conv_gflops_median": cv_med, "conv16x112_gflops": cvs_best, "conv_train_gflops": cvb_best}
    if previous:
        now = {k: max(v, previous.get(k, v)) for k, v in now.items()}
    return now


def _peak_line(m: dict) -> str:
    return (f"matmul {m['matmul_gflops']:.0f} GFLOP/s, conv3x3 {m['conv_gflops']:.0f} (16ch@112: "
            f"{m['conv16x112_gflops']:.0f}, fwd+bwd: {m['conv_train_gflops']:.0f})")


# ------------------------------------------------------------------------------------------ models


@dataclass
class Entry:
    """One benchmarked model and everything needed to time it."""

    name: str
    model: object
    size: int
    batch: int
    train_iter: object  # persistent iterator over its pipeline (the fit path)
    step_fn: Callable | None  # fit-free tf.function train step on a fixed batch (None: not measured)
    infer_fn: Callable
    xb: object
    yb: object
    xi: object
    flops_fwd: float = 0.0
    params: int = 0
    decoder: str = ""
    rss_growth_inprocess_mb: float = float("nan")
    times: dict = field(default_factory=lambda: {"train": [], "step": [], "infer": []})

    def run_train(self, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            logs = self.model.train_function(self.train_iter)
        _sync(logs)
        return time.perf_counter() - t0

    def run_step(self, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            loss = self.step_fn(self.xb, self.yb)
        _sync(loss)
        return time.perf_counter() - t0

    def run_infer(self, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            y = self.infer_fn(self.xi)
        _sync(y)
        return time.perf_counter() - t0


def _sync(x) -> None:
    import tensorflow as tf

    for t in tf.nest.flatten(x):
        if hasattr(t, "numpy"):
            t.numpy()
            return


def _make_step(model, loss_fn, lr: float):
    import keras
    import tensorflow as tf

    opt = keras.optimizers.Adam(lr)
    opt.build(model.trainable_variables)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            loss = tf.reduce_mean(loss_fn(y, out))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply(grads, model.trainable_variables)
        return loss

    return step


def _make_infer(model):
    import tensorflow as tf

    @tf.function
    def infer(x):
        return model(x, training=False)

    return infer


def _fixed_batches(ds, batch: int, infer_batch: int):
    """One training batch and one inference batch (images only) from a pipeline."""
    import tensorflow as tf

    it = iter(ds)
    xs, ys = [], []
    n = 0
    while n < max(batch, infer_batch):
        x, y = next(it)[:2]
        xs.append(x)
        ys.append(y)
        n += int(x.shape[0])
    x, y = tf.concat(xs, 0), tf.concat(ys, 0)
    return tf.identity(x[:batch]), tf.identity(y[:batch]), tf.identity(x[:infer_batch])


def default_config():
    """``configs/base.yaml`` defaults (not the quick profile)."""
    from segnet.config import load_config

    return load_config(path=paths.BASE_CONFIG)


def decoder_names() -> list[str]:
    from segnet.models.decoders import DECODERS

    return list(DECODERS)


@contextlib.contextmanager
def _keras_batchnorm():
    """Build models with Keras 3's own BatchNormalization instead of the fused layer (the lever rows)."""
    import keras

    from segnet.models import blocks

    fused = blocks.FusedBatchNormalization
    blocks.FusedBatchNormalization = keras.layers.BatchNormalization
    try:
        yield
    finally:
        blocks.FusedBatchNormalization = fused


def _build_segnet(name: str, cfg):
    import keras

    from segnet.losses import get_loss
    from segnet.models import build_model

    if name in LEVERS:
        c = cfg.replace(list(LEVERS[name]))
        with _keras_batchnorm():
            model = build_model(c)
    else:
        c = cfg.replace([f"model.decoder={name}"])
        model = build_model(c)
    model.compile(optimizer=keras.optimizers.Adam(c.train.lr), loss=get_loss(c.train.loss))
    return c, model, get_loss(c.train.loss)


def make_entry(name: str, cfg, images: np.ndarray, masks: np.ndarray, base_xy=None, *, with_step: bool = True,
               baseline_size: int = 128, baseline_filters: int = 16) -> Entry:
    """Build, compile and trace one model; the first ``fit`` step runs here (it builds the optimizer)."""
    import keras

    from segnet.models import count_params

    if name == BASELINE:
        model = baseline_unet(baseline_size, baseline_filters)
        x, y = base_xy if base_xy is not None else baseline_arrays(images, masks, baseline_size)
        batch = cfg.train.batch_size
        ds = baseline_dataset(x, y, batch)
        size = int(model.input.shape[1])
        loss_fn, lr, decoder = keras.losses.binary_crossentropy, 1e-3, ""
    else:
        c, model, loss_fn = _build_segnet(name, cfg)
        batch, size, lr, decoder = c.train.batch_size, c.data.size, c.train.lr, c.model.decoder
        ds = segnet_dataset(images, masks, c)
    xb, yb, xi = _fixed_batches(ds, batch, INFER_BATCH)
    # One real fit step: builds the optimizer and traces Keras' train function (what fit runs per step).
    with warnings.catch_warnings():  # "shuffle=True ignored for a tf.data.Dataset": the pipeline shuffles
        warnings.simplefilter("ignore", UserWarning)
        model.fit(ds, steps_per_epoch=1, epochs=1, verbose=0)
    entry = Entry(
        name=name, model=model, size=size, batch=batch, train_iter=iter(ds),
        step_fn=_make_step(model, loss_fn, lr) if with_step else None, infer_fn=_make_infer(model), xb=xb, yb=yb, xi=xi,
        decoder=decoder,
    )
    entry.params = count_params(model)
    entry.flops_fwd = forward_flops(model, (size, size, 1))
    return entry


def warm_up(entry: Entry, steps: int) -> None:
    """Trace the fit-free step and inference, run untimed fit-path steps."""
    if steps:
        entry.run_train(steps)
    if entry.step_fn is not None:
        entry.run_step(1)
    entry.run_infer(1)


# ------------------------------------------------------------------------------------ memory child


def memory_child(name: str) -> dict:
    """In a fresh process: RSS after importing TensorFlow, peak RSS after building ``name`` and running
    two fit-path training steps and one inference batch of 64."""
    _quiet_tf()
    import tensorflow as tf  # noqa: F401

    rss0 = _rss_mb()
    cfg = default_config()
    images, masks = synthetic_arrays(64)
    e = make_entry(name, cfg, images, masks)
    e.run_train(2)
    e.run_infer(1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"name": name, "rss_after_import_mb": rss0, "peak_rss_mb": peak, "rss_growth_mb": peak - rss0}


def measure_memory(names: Sequence[str], jobs: int = 2) -> dict[str, dict]:
    """Run :func:`memory_child` for every model in subprocesses (``jobs`` at a time, before any timing)."""
    out: dict[str, dict] = {}
    pending = list(names)
    running: list[tuple[str, subprocess.Popen]] = []
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    while pending or running:
        while pending and len(running) < jobs:
            n = pending.pop(0)
            cmd = [sys.executable, "-m", "segnet.bench", "--memory-child", n]
            running.append((n, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                text=True, env=env, cwd=str(paths.ROOT))))
        n, p = running.pop(0)
        stdout, stderr = p.communicate()
        try:
            out[n] = json.loads(stdout.strip().splitlines()[-1])
        except (json.JSONDecodeError, IndexError):
            tail = (stderr or "").strip().splitlines()[-1:] or ["no output"]
            print(f"bench: memory of {n} not measured ({tail[0]})", file=sys.stderr)
    return out


# ------------------------------------------------------------------------------------------ timing


def _order(names: list[str], r: int) -> list[str]:
    """Round ``r``'s order: rotated by ``r // 2``, reversed in odd rounds; over ``2 * len(names)`` rounds
    every model takes every position equally often (drift hits all alike)."""
    k = (r // 2) % len(names)
    o = names[k:] + names[:k]
    return o[::-1] if r % 2 else o


def time_rounds(entries: list[Entry], s: Settings, pipeline: Callable[[], float] | None = None,
                log: Callable[[str], None] = print) -> list[float]:
    """Interleaved rounds; fills ``entry.times`` (seconds per image) and returns pipeline images/s per round."""
    by_name = {e.name: e for e in entries}
    names = list(by_name)
    pipe = []
    for r in range(s.rounds):
        t_round = time.perf_counter()
        for n in _order(names, r):
            e = by_name[n]
            e.times["train"].append(e.run_train(s.train_steps) / (s.train_steps * e.batch))
            if e.step_fn is not None and s.step_steps:
                e.times["step"].append(e.run_step(s.step_steps) / (s.step_steps * e.batch))
            e.times["infer"].append(e.run_infer(s.infer_steps) / (s.infer_steps * INFER_BATCH))
        if pipeline is not None:
            pipe.append(pipeline())
        log(f"bench: round {r + 1}/{s.rounds} done in {time.perf_counter() - t_round:.1f} s")
    return pipe


def pipeline_rate(ds, batches: int) -> Callable[[], float]:
    """A function timing ``batches`` batches of a fresh iterator over ``ds`` (after one untimed batch)."""

    def run() -> float:
        it = iter(ds)
        x = next(it)[0]
        n = 0
        t0 = time.perf_counter()
        for _ in range(batches):
            x = next(it)[0]
            n += int(x.shape[0])
        return n / (time.perf_counter() - t0)

    return run


# ---------------------------------------------------------------------------------------- results


def _med(v):
    return statistics.median(v) if v else float("nan")


def results_table(entries: list[Entry], peaks: dict, memory: dict[str, dict]) -> list[dict]:
    """One row per model: medians/bests, FLOPs, % of peak, paired ratios to the baseline."""
    base = next((e for e in entries if e.name == BASELINE), None)
    rows = []
    for e in entries:
        row: dict = {"model": e.name, "decoder": e.decoder or "-", "input_size": e.size, "batch": e.batch,
                     "params": e.params}
        for kind in ("train", "step", "infer"):
            ips = [1.0 / t for t in e.times[kind]]
            row[f"{kind}_images_per_s"] = _med(ips)
            row[f"{kind}_images_per_s_best"] = max(ips) if ips else float("nan")
        row["train_s_per_batch"] = e.batch / row["train_images_per_s"]
        row["fwd_gflops_per_image"] = e.flops_fwd / 1e9
        row["train_gflops_per_image"] = 3 * e.flops_fwd / 1e9
        row["train_gflops_per_s"] = 3 * e.flops_fwd * row["train_images_per_s"] / 1e9
        row["step_gflops_per_s"] = 3 * e.flops_fwd * row["step_images_per_s"] / 1e9
        row["infer_gflops_per_s"] = e.flops_fwd * row["infer_images_per_s"] / 1e9
        for kind in ("train", "step", "infer"):
            row[f"{kind}_pct_conv_peak"] = 100 * row[f"{kind}_gflops_per_s"] / peaks["conv_gflops"]
        row["train_pct_matmul_peak"] = 100 * row["train_gflops_per_s"] / peaks["matmul_gflops"]
        mem = memory.get(e.name, {})
        row["peak_rss_mb"] = mem.get("peak_rss_mb", float("nan"))
        row["rss_growth_mb"] = mem.get("rss_growth_mb", e.rss_growth_inprocess_mb)
        row["memory_method"] = "subprocess" if mem else "inprocess"
        for kind in ("train", "step", "infer"):
            if base is not None and base.times[kind] and e.times[kind]:
                # time per image of the baseline / of this model, within each round: paired, drift cancels
                ratios = [tb / tm for tb, tm in zip(base.times[kind], e.times[kind], strict=True)]
                row[f"{kind}_x_baseline"] = _med(ratios)
            else:
                row[f"{kind}_x_baseline"] = float("nan")
        rows.append(row)
    return rows


def summary_line(machine: dict, findings: dict) -> str:
    """The bench's closing line: machine peaks, pipeline rate, and the ratios of the models that were run."""
    parts = [f"peak: matmul {machine['matmul_gflops']:.0f} GFLOP/s, conv3x3 {machine['conv_gflops']:.0f} GFLOP/s",
             f"pipeline {findings['pipeline_images_per_s']:.0f} images/s"]
    if "default_model" in findings:
        parts.append(f"{findings['default_model']} x baseline: train {findings['default_train_x_baseline']:.2f}, "
                     f"infer {findings['default_infer_x_baseline']:.2f}, "
                     f"{findings['default_train_pct_conv_peak']:.0f}% of conv peak")
    ratio = findings.get("unpool_over_transposed_train", float("nan"))
    if np.isfinite(ratio):
        parts.append(f"maxunpool/transposed train time {ratio:.2f}x")
    return "; ".join(parts)


def paired_ratio(entries: list[Entry], num: str, den: str, kind: str) -> float:
    """Median over rounds of time-per-image(num) / time-per-image(den)."""
    by = {e.name: e for e in entries}
    if num not in by or den not in by:
        return float("nan")
    return _med([a / b for a, b in zip(by[num].times[kind], by[den].times[kind], strict=True)])


TABLE_COLUMNS = [
    ("model", "model", "s"), ("params", "params", "d"),
    ("train_images_per_s", "train/s", ".1f"), ("train_images_per_s_best", "best", ".1f"),
    ("step_images_per_s", "step/s", ".1f"), ("infer_images_per_s", "infer/s", ".1f"),
    ("infer_images_per_s_best", "best", ".1f"), ("train_x_baseline", "train x", ".2f"),
    ("infer_x_baseline", "infer x", ".2f"), ("fwd_gflops_per_image", "GF/img", ".2f"),
    ("train_gflops_per_s", "trainGF/s", ".1f"), ("train_pct_conv_peak", "%conv", ".0f"),
    ("step_pct_conv_peak", "%conv step", ".0f"), ("peak_rss_mb", "peakMB", ".0f"),
    ("rss_growth_mb", "growMB", ".0f"),
]


def format_table(rows: list[dict]) -> str:
    heads = [h for _, h, _ in TABLE_COLUMNS]
    cells = []
    for r in rows:
        line = []
        for key, _, fmt in TABLE_COLUMNS:
            v = r.get(key)
            if isinstance(v, float) and not np.isfinite(v):
                line.append("-")
            else:
                line.append(format(v, fmt) if fmt != "s" else str(v))
        cells.append(line)
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    fmt_line = lambda xs: "  ".join(x.rjust(w) if i else x.ljust(w) for i, (x, w) in enumerate(zip(xs, widths, strict=True)))  # noqa: E731
    return "\n".join([fmt_line(heads), fmt_line(["-" * w for w in widths]), *map(fmt_line, cells)])


def _out_paths(out: str | Path | None) -> tuple[Path, Path]:
    p = Path(out) if out else DEFAULT_OUT
    if p.suffix.lower() in (".csv", ".json"):
        p = p.with_suffix("")
    p.parent.mkdir(parents=True, exist_ok=True)
    return p.with_name(p.name + ".csv"), p.with_name(p.name + ".json")


def _bench_figure(df):
    try:
        from segnet.plots import plot_bench

        return plot_bench(df, title="segnet bench: images/s (median over rounds)")
    except ImportError:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(9, 4))
        x = np.arange(len(df))
        ax.bar(x - 0.2, df["train_images_per_s"], 0.4, label="train")
        ax.bar(x + 0.2, df["infer_images_per_s"], 0.4, label="inference")
        ax.set_xticks(x, df["model"], rotation=30, ha="right")
        ax.set_ylabel("images / s")
        ax.legend()
        return fig


def log_to_mlflow(df, summary: dict, csv_path: Path, json_path: Path, quick: bool) -> str | None:
    from segnet import tracking

    uri = tracking.tracking_uri()
    name = f"bench{'-quick' if quick else ''}-{time.strftime('%m%d-%H%M%S')}"
    run = tracking.create_run(uri, EXPERIMENT, name, {"segnet.bench.quick": quick})
    with tracking.run_guard(run):
        run.log_params({f"bench.{k}": v for k, v in summary["settings"].items()})
        run.log_params({k: v for k, v in summary["environment"].items()})
        metrics = {k: v for k, v in summary["machine"].items() if isinstance(v, int | float)}
        metrics.update({k: v for k, v in summary["findings"].items() if isinstance(v, int | float)})
        for row in df.to_dict("records"):
            for k, v in row.items():
                if k not in ("model", "decoder", "memory_method") and isinstance(v, int | float) and np.isfinite(v):
                    metrics[f"{row['model']}.{k}"] = float(v)
        run.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
        run.log_artifact(csv_path)
        run.log_artifact(json_path)
        run.log_figure(_bench_figure(df), "plots/bench.png")
    return run.run_id


# ------------------------------------------------------------------------------------------- main


def bench(quick: bool = False, out: str | Path | None = None, *, levers: bool = False, names: Sequence[str] | None = None,
          settings: Settings | None = None, overrides: Sequence[str] = (), log_mlflow: bool = True, log: Callable[[str], None] = print) -> dict:
    """Run the benchmark; write CSV/JSON, print the table, log to MLflow. Returns the summary dict
    (``rows``: one dict per model; ``machine``; ``findings``; ``run_id``)."""
    _quiet_tf()
    t_start = time.perf_counter()
    cpu_start = time.process_time()
    load_start = os.getloadavg()[0]
    s = settings or (QUICK if quick else FULL)
    import keras
    import pandas as pd
    import tensorflow as tf

    cfg = default_config()
    if overrides:
        cfg = cfg.replace(list(overrides))
    if levers:
        names = [*LEVERS, cfg.model.decoder] if names is None else [*LEVERS, *names]
        out = out or LEVERS_OUT
    all_names = [*(names if names is not None else decoder_names()), BASELINE]
    all_names = list(dict.fromkeys(all_names))

    memory: dict[str, dict] = {}
    if s.memory == "subprocess":
        log(f"bench: peak RSS of {len(all_names)} models in subprocesses ...")
        memory = measure_memory(all_names)

    log("bench: machine peak (float32 matmul, 3x3 conv) ...")
    machine = measure_peaks(s.peak_repeats)
    log("bench: peak " + _peak_line(machine))

    images, masks = synthetic_arrays(s.n_images)
    base_xy = baseline_arrays(images, masks, s.baseline_size)
    entries = []
    for n in all_names:
        t0 = time.perf_counter()
        rss_before = _rss_mb()
        reset = s.memory == "inprocess" and _reset_hwm()
        e = make_entry(n, cfg, images, masks, base_xy=base_xy, with_step=s.step_steps > 0,
                       baseline_size=s.baseline_size, baseline_filters=s.baseline_filters)
        warm_up(e, s.warmup)
        if reset:  # peak RSS while building, tracing and running its first steps, over RSS before
            e.rss_growth_inprocess_mb = max(0.0, _hwm_mb() - rss_before)
        entries.append(e)
        log(f"bench: built and warmed {n} in {time.perf_counter() - t0:.1f} s")

    pipe_fn = None
    try:
        pipe_fn = pipeline_rate(segnet_dataset(images, masks, cfg), s.pipeline_batches)
        pipe_fn()
    except ImportError:
        pipe_fn = None
    pipe = time_rounds(entries, s, pipe_fn, log=log)

    # the peak again after the rounds: the host's slow spells must not lower the reference
    machine = measure_peaks(s.peak_repeats, machine)
    log("bench: peak (best of before and after the rounds) " + _peak_line(machine))
    rows = results_table(entries, machine, memory)
    df = pd.DataFrame(rows)
    default = cfg.model.decoder
    findings = {
        "pipeline_images_per_s": _med(pipe),
        "pipeline_images_per_s_best": max(pipe) if pipe else float("nan"),
        "unpool_over_transposed_train": paired_ratio(entries, "maxunpool", "transposed", "train"),
        "unpool_over_transposed_step": paired_ratio(entries, "maxunpool", "transposed", "step"),
        "unpool_over_transposed_infer": paired_ratio(entries, "maxunpool", "transposed", "infer"),
    }
    drow = next((r for r in rows if r["model"] == default), None)
    if drow is not None:
        findings.update({
            "default_model": default,
            "default_train_x_baseline": drow["train_x_baseline"],
            "default_infer_x_baseline": drow["infer_x_baseline"],
            "default_train_pct_conv_peak": drow["train_pct_conv_peak"],
            "default_step_pct_conv_peak": drow["step_pct_conv_peak"],
        })
    findings["bench_wall_s"] = time.perf_counter() - t_start
    # Contention: other processes on this host take CPU from the bench; the ratios (paired within each
    # round) survive it, absolute images/s do not. Recorded so a reader can judge.
    findings["own_cpu_per_wall"] = (time.process_time() - cpu_start) / findings["bench_wall_s"]
    findings["loadavg_start"] = load_start
    findings["loadavg_end"] = os.getloadavg()[0]
    summary = {
        "settings": {**asdict(s), "quick": quick, "levers": levers, "infer_batch": INFER_BATCH, "models": ",".join(all_names)},
        "environment": {
            "tensorflow": tf.__version__, "keras": keras.__version__, "cpu": _cpu_name(),
            "cpu_count": os.cpu_count(), "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
            "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default(on)"),
            "config": "configs/base.yaml", "pipeline": pipeline_name(),
        },
        "machine": machine,
        "findings": findings,
        "rows": rows,
    }
    csv_path, json_path = _out_paths(out)
    df.to_csv(csv_path, index=False)
    log("")
    log(format_table(rows))
    log("")
    log(summary_line(machine, findings))
    run_id = None
    if log_mlflow:
        json_path.write_text(json.dumps(summary, indent=2, default=_json_default))
        run_id = log_to_mlflow(df, summary, csv_path, json_path, quick)
        log(f"bench: MLflow run {run_id} in experiment {EXPERIMENT}")
    summary["run_id"] = run_id
    json_path.write_text(json.dumps(summary, indent=2, default=_json_default))
    log(f"bench: wrote {csv_path} and {json_path} ({time.perf_counter() - t_start:.0f} s)")
    return summary


def _json_default(o):
    if isinstance(o, np.integer | np.floating):
        return o.item()
    return str(o)


if __name__ == "__main__":  # the memory subprocess: python -m segnet.bench --memory-child NAME
    if len(sys.argv) == 3 and sys.argv[1] == "--memory-child":
        print(json.dumps(memory_child(sys.argv[2])), flush=True)
    else:
        print("usage: python -m segnet bench [--quick] [--out FILE]", file=sys.stderr)
        sys.exit(2)

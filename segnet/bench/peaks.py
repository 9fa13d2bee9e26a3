"""The machine's peak, measured in the same run: float32 matmul and 3x3 convolution GFLOP/s."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


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


def peak_line(m: dict) -> str:
    """The peaks in one line of the bench's log."""
    return (f"matmul {m['matmul_gflops']:.0f} GFLOP/s, conv3x3 {m['conv_gflops']:.0f} (16ch@112: "
            f"{m['conv16x112_gflops']:.0f}, fwd+bwd: {m['conv_train_gflops']:.0f})")

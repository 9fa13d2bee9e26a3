"""The timing harness: one :class:`Entry` per model (its fit path, fit-free step and inference, each
traced before timing) and interleaved rounds over all of them.

``train`` times Keras' own compiled train function (what ``model.fit`` runs per step) pulling batches
through one persistent iterator over the model's ``tf.data`` pipeline; ``step`` a ``tf.function`` train
step on one fixed in-memory batch; ``infer`` a ``tf.function`` forward pass on a fixed batch of
:data:`~segnet.bench.settings.INFER_BATCH`. Rounds interleave the models (:func:`round_order`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from segnet.bench.flops import forward_flops
from segnet.bench.models import baseline_arrays, baseline_dataset, baseline_unet, build_segnet, segnet_dataset
from segnet.bench.settings import BASELINE, INFER_BATCH, Settings


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
        c, model, loss_fn = build_segnet(name, cfg)
        batch, size, lr, decoder = c.train.batch_size, c.data.size, c.train.lr, c.model.decoder
        ds = segnet_dataset(images, masks, c)
    xb, yb, xi = _fixed_batches(ds, batch, INFER_BATCH)
    # One real fit step: builds the optimizer and traces Keras' train function (what fit runs per step).
    with warnings.catch_warnings():  # "shuffle=True ignored for a tf.data.Dataset": the pipeline shuffles
        warnings.simplefilter("ignore", UserWarning)
        model.fit(ds, steps_per_epoch=1, epochs=1, verbose=0)
    return Entry(
        name=name, model=model, size=size, batch=batch, train_iter=iter(ds),
        step_fn=_make_step(model, loss_fn, lr) if with_step else None, infer_fn=_make_infer(model), xb=xb, yb=yb,
        xi=xi, decoder=decoder, params=count_params(model), flops_fwd=forward_flops(model, (size, size, 1)),
    )


def warm_up(entry: Entry, steps: int) -> None:
    """Trace the fit-free step and inference, run untimed fit-path steps."""
    if steps:
        entry.run_train(steps)
    if entry.step_fn is not None:
        entry.run_step(1)
    entry.run_infer(1)


def round_order(names: list[str], r: int) -> list[str]:
    """Round ``r``'s order: rotated by ``r // 2``, reversed in odd rounds; over ``2 * len(names)`` rounds
    every model takes every position equally often (drift hits all alike)."""
    k = (r // 2) % len(names)
    o = names[k:] + names[:k]
    return o[::-1] if r % 2 else o


def time_rounds(entries: list[Entry], s: Settings, pipeline: Callable[[], float] | None = None,
                log: Callable[[str], None] = print) -> list[float]:
    """Interleaved rounds; fills ``entry.times`` (seconds per image) and returns, per round, what
    ``pipeline`` returned (the pipeline's images/s, timed after the models in the same round)."""
    by_name = {e.name: e for e in entries}
    names = list(by_name)
    pipe = []
    for r in range(s.rounds):
        t_round = time.perf_counter()
        for n in round_order(names, r):
            e = by_name[n]
            e.times["train"].append(e.run_train(s.train_steps) / (s.train_steps * e.batch))
            if e.step_fn is not None and s.step_steps:
                e.times["step"].append(e.run_step(s.step_steps) / (s.step_steps * e.batch))
            e.times["infer"].append(e.run_infer(s.infer_steps) / (s.infer_steps * INFER_BATCH))
        if pipeline is not None:
            pipe.append(pipeline())
        log(f"bench: round {r + 1}/{s.rounds} done in {time.perf_counter() - t_round:.1f} s")
    return pipe

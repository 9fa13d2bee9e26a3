"""Benchmark: speed, memory and FLOP/s of every registered decoder against a baseline Keras U-Net.

``python -m segnet bench [--quick] [--levers] [--out FILE]`` (``make bench``) runs, in one process:

* **machine peak** (:mod:`~segnet.bench.peaks`), measured in the same run: a float32 matmul (2048³) and a
  3x3 convolution (32×56×56×64 → 64, 'same'), each the best of several repeats, in GFLOP/s;
* **models** (:mod:`~segnet.bench.models`): every decoder of :data:`segnet.models.decoders.DECODERS` at
  ``configs/base.yaml`` defaults (size 112 reflect-pad, depth 4, filters 16, batch 32, Adam + the
  configured loss), and ``baseline_keras_unet``: the plain Keras U-Net of the well-known TGS tutorial
  (input resized to 128x128, 16 filters doubling to 256, depth 4, two conv-BN-ReLU per block, 3x3
  stride-2 Conv2DTranspose, dropout 0.1, sigmoid, Adam + binary cross-entropy, ``metrics=["accuracy"]``),
  written here as the comparator;
* **the data pipeline** on its own (``segnet.data.pipeline.pipeline_throughput``: ``make_dataset`` in
  training mode, epoch by epoch, images/s).

What is timed, per model (:mod:`~segnet.bench.timing`; all after a warm-up that traces every function):

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

FLOPs (:mod:`~segnet.bench.flops`) are counted analytically from the forward graph; training ≈ 3×
forward. Memory: :mod:`~segnet.bench.memory` (a fresh subprocess per model; in process with ``--quick``).

Levers (``--levers``): the default model step by step from the tutorial's setting to segnet's, in one
interleaved run with the baseline, so each lever's ratio is measured in the same run:
``keras_bn_resize128`` (the default decoder, input resized to 128, Keras 3's own BatchNormalization),
``keras_bn_pad112`` (native resolution: 101 reflect-padded to 112) and the default model itself
(112, :class:`~segnet.models.layers.FusedBatchNormalization`). Outputs go to ``bench/levers.*``.

Outputs (:mod:`~segnet.bench.report`): ``bench/results.csv`` and ``.json`` (or ``--out``), a table on
stdout, and an MLflow run in the experiment ``segnet-bench`` (params, per-model metrics
``<model>.<metric>``, the CSV and JSON, a bar chart).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from segnet.bench.flops import forward_flops
from segnet.bench.memory import hwm_mb, measure_memory, quiet_tf, reset_hwm, rss_mb
from segnet.bench.models import baseline_unet, build_segnet, decoder_names, default_config, synthetic_arrays
from segnet.bench.peaks import measure_peaks, peak_line
from segnet.bench.report import (
    contention,
    environment,
    findings,
    format_table,
    log_to_mlflow,
    out_paths,
    results_table,
    settings_params,
    summary_line,
    write_json,
)
from segnet.bench.settings import BASELINE, EXPERIMENT, FULL, LEVERS, LEVERS_OUT, QUICK, Settings
from segnet.bench.timing import Entry, make_entry, round_order, time_rounds, warm_up

__all__ = [
    "BASELINE", "EXPERIMENT", "FULL", "LEVERS", "QUICK", "Settings", "baseline_unet", "bench", "build_segnet",
    "decoder_names", "default_config", "forward_flops", "measure_peaks", "round_order", "summary_line",
]


def _model_names(cfg, names: Sequence[str] | None, levers: bool) -> list[str]:
    """The rows, in order: the decoders (or the lever rows and then the default decoder), the baseline last."""
    if levers:
        names = [*LEVERS, cfg.model.decoder] if names is None else [*LEVERS, *names]
    return list(dict.fromkeys([*(names if names is not None else decoder_names()), BASELINE]))


def _build_entries(names: list[str], cfg, s: Settings, images, masks, log: Callable[[str], None]) -> list[Entry]:
    """Build, trace and warm every model; with in-process memory, each one's peak RSS growth meanwhile."""
    from segnet.bench.models import baseline_arrays

    base_xy = baseline_arrays(images, masks, s.baseline_size)
    entries = []
    for n in names:
        t0 = time.perf_counter()
        rss_before = rss_mb()
        reset = s.memory == "inprocess" and reset_hwm()
        e = make_entry(n, cfg, images, masks, base_xy=base_xy, with_step=s.step_steps > 0,
                       baseline_size=s.baseline_size, baseline_filters=s.baseline_filters)
        warm_up(e, s.warmup)
        if reset:  # peak RSS while building, tracing and running its first steps, over RSS before
            e.rss_growth_inprocess_mb = max(0.0, hwm_mb() - rss_before)
        entries.append(e)
        log(f"bench: built and warmed {n} in {time.perf_counter() - t0:.1f} s")
    return entries


def _write_outputs(summary: dict, out, quick: bool, log_mlflow: bool, log: Callable[[str], None],
                   t_start: float) -> str | None:
    """CSV, table and closing line on stdout, MLflow run, JSON (with the run id); returns the run id."""
    import pandas as pd

    df = pd.DataFrame(summary["rows"])
    csv_path, json_path = out_paths(out)
    df.to_csv(csv_path, index=False)
    for line in ("", format_table(summary["rows"]), "", summary_line(summary["machine"], summary["findings"])):
        log(line)
    run_id = None
    if log_mlflow:
        write_json(json_path, summary)  # the run logs the JSON; rewritten below with the run id
        run_id = log_to_mlflow(df, summary, csv_path, json_path, quick)
        log(f"bench: MLflow run {run_id} in experiment {EXPERIMENT}")
    summary["run_id"] = run_id
    write_json(json_path, summary)
    log(f"bench: wrote {csv_path} and {json_path} ({time.perf_counter() - t_start:.0f} s)")
    return run_id


def bench(quick: bool = False, out: str | Path | None = None, *, levers: bool = False,
          names: Sequence[str] | None = None, settings: Settings | None = None, overrides: Sequence[str] = (),
          log_mlflow: bool = True, log: Callable[[str], None] = print) -> dict:
    """Run the benchmark; write CSV/JSON, print the table, log to MLflow. Returns the summary dict
    (``settings``, ``environment``, ``machine``, ``findings``, ``rows``: one dict per model; ``run_id``)."""
    from segnet.data.pipeline import pipeline_throughput

    quiet_tf()
    t_start, cpu_start, load_start = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    s = settings or (QUICK if quick else FULL)
    cfg = default_config().replace(list(overrides)) if overrides else default_config()
    all_names = _model_names(cfg, names, levers)
    out = out or (LEVERS_OUT if levers else None)

    memory: dict[str, dict] = {}
    if s.memory == "subprocess":
        log(f"bench: peak RSS of {len(all_names)} models in subprocesses ...")
        memory = measure_memory(all_names)
    log("bench: machine peak (float32 matmul, 3x3 conv) ...")
    machine = measure_peaks(s.peak_repeats)
    log("bench: peak " + peak_line(machine))

    images, masks = synthetic_arrays(s.n_images)
    entries = _build_entries(all_names, cfg, s, images, masks, log)
    pipe = time_rounds(entries, s, lambda: pipeline_throughput(images, masks, cfg, batches=s.pipeline_batches),
                       log=log)
    # the peak again after the rounds: the host's slow spells must not lower the reference
    machine = measure_peaks(s.peak_repeats, machine)
    log("bench: peak (best of before and after the rounds) " + peak_line(machine))

    rows = results_table(entries, machine, memory)
    summary = {
        "settings": settings_params(s, quick, levers, all_names),
        "environment": environment(),
        "machine": machine,
        "findings": {**findings(entries, rows, pipe, cfg.model.decoder), **contention(t_start, cpu_start, load_start)},
        "rows": rows,
    }
    _write_outputs(summary, out, quick, log_mlflow, log, t_start)
    return summary

"""From timings to results: the per-model rows, the findings, the table on stdout, the closing line,
the CSV/JSON files and the MLflow run (experiment ``segnet-bench``: params, per-model metrics
``<model>.<metric>``, the CSV and JSON, a bar chart)."""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from segnet.bench.settings import BASELINE, DEFAULT_OUT, EXPERIMENT, INFER_BATCH, PIPELINE, Settings
from segnet.bench.timing import Entry

KINDS = ("train", "step", "infer")


def _med(v):
    return statistics.median(v) if v else float("nan")


def _speed_columns(e: Entry, peaks: dict) -> dict:
    """Images/s (median and best round), GFLOP/s and % of the machine's peaks of one model."""
    row: dict = {}
    for kind in KINDS:
        ips = [1.0 / t for t in e.times[kind]]
        row[f"{kind}_images_per_s"] = _med(ips)
        row[f"{kind}_images_per_s_best"] = max(ips) if ips else float("nan")
    row["train_s_per_batch"] = e.batch / row["train_images_per_s"]
    row["fwd_gflops_per_image"] = e.flops_fwd / 1e9
    row["train_gflops_per_image"] = 3 * e.flops_fwd / 1e9
    row["train_gflops_per_s"] = 3 * e.flops_fwd * row["train_images_per_s"] / 1e9
    row["step_gflops_per_s"] = 3 * e.flops_fwd * row["step_images_per_s"] / 1e9
    row["infer_gflops_per_s"] = e.flops_fwd * row["infer_images_per_s"] / 1e9
    for kind in KINDS:
        row[f"{kind}_pct_conv_peak"] = 100 * row[f"{kind}_gflops_per_s"] / peaks["conv_gflops"]
    row["train_pct_matmul_peak"] = 100 * row["train_gflops_per_s"] / peaks["matmul_gflops"]
    return row


def results_table(entries: list[Entry], peaks: dict, memory: dict[str, dict]) -> list[dict]:
    """One row per model: medians/bests, FLOPs, % of peak, memory, paired ratios to the baseline."""
    base = next((e for e in entries if e.name == BASELINE), None)
    rows = []
    for e in entries:
        row: dict = {"model": e.name, "decoder": e.decoder or "-", "input_size": e.size, "batch": e.batch,
                     "params": e.params, **_speed_columns(e, peaks)}
        mem = memory.get(e.name, {})
        row["peak_rss_mb"] = mem.get("peak_rss_mb", float("nan"))
        row["rss_growth_mb"] = mem.get("rss_growth_mb", e.rss_growth_inprocess_mb)
        row["memory_method"] = "subprocess" if mem else "inprocess"
        for kind in KINDS:
            if base is not None and base.times[kind] and e.times[kind]:
                # time per image of the baseline / of this model, within each round: paired, drift cancels
                ratios = [tb / tm for tb, tm in zip(base.times[kind], e.times[kind], strict=True)]
                row[f"{kind}_x_baseline"] = _med(ratios)
            else:
                row[f"{kind}_x_baseline"] = float("nan")
        rows.append(row)
    return rows


def paired_ratio(entries: list[Entry], num: str, den: str, kind: str) -> float:
    """Median over rounds of time-per-image(num) / time-per-image(den)."""
    by = {e.name: e for e in entries}
    if num not in by or den not in by:
        return float("nan")
    return _med([a / b for a, b in zip(by[num].times[kind], by[den].times[kind], strict=True)])


def findings(entries: list[Entry], rows: list[dict], pipe: list[float], default: str) -> dict:
    """The run's headline numbers: pipeline images/s, maxunpool/transposed ratios, the default model's."""
    out = {
        "pipeline_images_per_s": _med(pipe),
        "pipeline_images_per_s_best": max(pipe) if pipe else float("nan"),
        **{f"unpool_over_transposed_{kind}": paired_ratio(entries, "maxunpool", "transposed", kind)
           for kind in KINDS},
    }
    drow = next((r for r in rows if r["model"] == default), None)
    if drow is not None:
        out.update({
            "default_model": default,
            "default_train_x_baseline": drow["train_x_baseline"],
            "default_infer_x_baseline": drow["infer_x_baseline"],
            "default_train_pct_conv_peak": drow["train_pct_conv_peak"],
            "default_step_pct_conv_peak": drow["step_pct_conv_peak"],
        })
    return out


def contention(t_start: float, cpu_start: float, load_start: float) -> dict:
    """Other processes on this host take CPU from the bench; the ratios (paired within each round) survive
    it, absolute images/s do not. Recorded so a reader can judge."""
    wall = time.perf_counter() - t_start
    return {"bench_wall_s": wall, "own_cpu_per_wall": (time.process_time() - cpu_start) / wall,
            "loadavg_start": load_start, "loadavg_end": os.getloadavg()[0]}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def environment() -> dict:
    """Versions, CPU and threading: logged as MLflow params."""
    import keras
    import tensorflow as tf

    return {
        "tensorflow": tf.__version__, "keras": keras.__version__, "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(), "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default(on)"),
        "config": "configs/base.yaml", "pipeline": PIPELINE,
    }


def settings_params(s: Settings, quick: bool, levers: bool, names: list[str]) -> dict:
    """The settings as recorded in the summary (and logged as ``bench.*`` params)."""
    from dataclasses import asdict

    return {**asdict(s), "quick": quick, "levers": levers, "infer_batch": INFER_BATCH, "models": ",".join(names)}


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
    """The table printed on stdout (:data:`TABLE_COLUMNS`; ``-`` where a number was not measured)."""
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

    def fmt_line(xs):
        return "  ".join(x.rjust(w) if i else x.ljust(w) for i, (x, w) in enumerate(zip(xs, widths, strict=True)))

    return "\n".join([fmt_line(heads), fmt_line(["-" * w for w in widths]), *map(fmt_line, cells)])


def out_paths(out: str | Path | None) -> tuple[Path, Path]:
    """``(csv, json)`` for the ``--out`` prefix (a ``.csv``/``.json`` suffix is dropped); folder created."""
    p = Path(out) if out else DEFAULT_OUT
    if p.suffix.lower() in (".csv", ".json"):
        p = p.with_suffix("")
    p.parent.mkdir(parents=True, exist_ok=True)
    return p.with_name(p.name + ".csv"), p.with_name(p.name + ".json")


def json_default(o):
    """``json.dumps`` fallback: numpy scalars as numbers, anything else as its string."""
    if isinstance(o, np.integer | np.floating):
        return o.item()
    return str(o)


def write_json(path: Path, summary: dict) -> None:
    path.write_text(json.dumps(summary, indent=2, default=json_default))


def log_to_mlflow(df, summary: dict, csv_path: Path, json_path: Path, quick: bool) -> str | None:
    """One run in :data:`EXPERIMENT`: settings and environment as params, the machine's peaks, the findings
    and every row's numbers (``<model>.<metric>``) as metrics, the CSV, the JSON and ``plots/bench.png``."""
    from segnet import tracking
    from segnet.plots import plot_bench

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
        run.log_figure(plot_bench(df, title="segnet bench: images/s (median over rounds)"), "plots/bench.png")
    return run.run_id

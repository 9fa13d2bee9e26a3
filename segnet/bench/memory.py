"""Memory per model.

``peak_rss_mb``: measured per model in a **fresh subprocess** (``python -m segnet.bench --memory-child
NAME``) that imports TensorFlow, builds the model and runs two training steps and one inference batch;
``peak_rss_mb`` is that process's peak RSS (``ru_maxrss``) and ``rss_growth_mb`` the peak minus its RSS
right after importing TensorFlow (the model's own cost). In one process freed memory is reused and RSS
never shrinks, so per-model peaks cannot be separated there; ``--quick`` therefore reports
``rss_growth_mb`` measured *in process* (``VmHWM`` reset through ``/proc/self/clear_refs`` before the
model's warm-up: a lower bound, see :func:`reset_hwm`) and leaves the subprocess numbers to the full run.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from segnet import paths


def quiet_tf() -> None:
    """TensorFlow's C++ start-up lines off, unless the user chose a level."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def rss_mb() -> float:
    """This process's resident set size now, MB."""
    return _status_field("VmRSS")


def hwm_mb() -> float:
    """This process's peak resident set size (since start or the last :func:`reset_hwm`), MB."""
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


def reset_hwm() -> bool:
    """Reset the peak-RSS high-water mark of this process (Linux >= 4.0); False when not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory_child(name: str) -> dict:
    """In a fresh process: RSS after importing TensorFlow, peak RSS after building ``name`` and running
    two fit-path training steps and one inference batch of 64."""
    quiet_tf()
    import tensorflow as tf  # noqa: F401

    from segnet.bench.models import default_config, synthetic_arrays
    from segnet.bench.timing import make_entry

    rss0 = rss_mb()
    images, masks = synthetic_arrays(64)
    e = make_entry(name, default_config(), images, masks)
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

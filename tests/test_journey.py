"""The user's journey through the README, each command a separate process, as from a fresh shell.

train -> predict -> evaluate -> the logged model in a Python that cannot import segnet (mlflow.pyfunc,
through the model's own code_paths) -> `mlflow models serve`. The rest of the journey, `ablate` (two
tiny variants, children as their own processes, a restart) -> `compare`, runs the same way in
tests/test_ablate.py; stopping them by signal in tests/test_signals.py. Nothing here may pass
because this pytest process happens to have imported a segnet module: every step runs in its own
process with its own imports, on a tiny synthetic dataset, against its own sqlite store.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from segnet import paths
from tests.procs import free_port

TIMEOUT = 600


def tiny(data_dir: Path) -> list[str]:
    return [f"data.dir={data_dir}", "data.size=64", "data.resize_mode=resize", "data.n_folds=4",
            "model.filters=4", "model.depth=2", "train.epochs=2", "train.batch_size=16", "eval.overlays=2",
            "tracking.experiment=journey"]


# The journey's training also switches loss for its last epoch, as a user may configure it: the check of
# tests/test_losses.py's (slow) twin, on this process instead of a training of its own.
FINE_TUNE = ["train.loss=dice", "train.lovasz_epochs=1", "train.finetune_loss=bce"]


class Journey:
    def __init__(self, tmp: Path, data: Path):
        self.tmp, self.data = tmp, data
        self.uri = f"sqlite:///{tmp / 'mlflow.db'}"
        venv_bin = str(Path(sys.executable).parent)  # what activating the venv does (mlflow serve runs `uvicorn`)
        self.env = {**os.environ, "MLFLOW_TRACKING_URI": self.uri, "SEGNET_RUNS_DIR": str(tmp / "runs"),
                    "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1",
                    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
                    "PATH": venv_bin + os.pathsep + os.environ.get("PATH", "")}
        self.env.pop("TGS_DATA", None)
        self.run_id: str | None = None
        self.submission: Path | None = None

    def run(self, args: list[str], env: dict | None = None, timeout: float = TIMEOUT) -> str:
        """Run a command to completion; it must exit 0. Returns stdout and stderr together."""
        t0 = time.perf_counter()
        p = subprocess.run(args, cwd=self.tmp, env=env or self.env, capture_output=True, text=True, timeout=timeout)
        out = p.stdout + p.stderr
        print(f"[{time.perf_counter() - t0:5.1f}s] {' '.join(args[1:4])} ...")
        assert p.returncode == 0, f"{args} exited {p.returncode}:\n{out[-4000:]}"
        return out

    def segnet(self, *args: str) -> str:
        return self.run([sys.executable, "-m", "segnet", *args])


@pytest.fixture(scope="module")
def journey(tiny_synth, tmp_path_factory) -> Journey:
    """`segnet train` on the tiny set: prints run_id."""
    j = Journey(tmp_path_factory.mktemp("journey"), tiny_synth)
    out = j.segnet("train", *tiny(tiny_synth), *FINE_TUNE)
    m = re.search(r"^run_id: ([0-9a-f]{32})$", out, re.M)
    assert m, out[-3000:]
    j.run_id = m.group(1)
    assert "best_val_tgs_map" in out
    # the last epoch fine-tunes with the configured train.finetune_loss, not the default lovasz_hinge
    assert "epoch 2: fine-tuning with bce" in out and "lovasz" not in out.replace("lovasz_epochs", ""), out[-3000:]
    return j


def _submission_masks(path: Path) -> dict[str, np.ndarray]:
    from segnet.data.rle import rle_decode

    df = pd.read_csv(path, dtype={"id": str}, keep_default_na=False)
    return {i: rle_decode(r).astype(bool) for i, r in zip(df.id, df.rle_mask, strict=True)}


def _agree(a: np.ndarray, b: np.ndarray) -> float:
    return float((np.asarray(a, bool) == np.asarray(b, bool)).mean())


def test_predict_writes_a_valid_submission(journey):
    from segnet.data.tgs import read_images

    out_csv = journey.tmp / "s.csv"
    out = journey.segnet("predict", "--run-id", journey.run_id, "--images", str(journey.data / "test" / "images"),
                         "--out", str(out_csv))
    assert "submission:" in out and "images/s" in out
    lines = out_csv.read_text().splitlines()
    assert lines[0] == "id,rle_mask"
    _, ids = read_images(journey.data / "test" / "images")
    masks = _submission_masks(out_csv)
    assert sorted(masks) == sorted(ids) and len(lines) == 1 + len(ids)
    assert all(m.shape == (101, 101) for m in masks.values())
    journey.submission = out_csv


def test_evaluate_logs_eval_metrics(journey):
    from mlflow import MlflowClient

    out = journey.segnet("evaluate", "--run-id", journey.run_id)
    assert re.search(r"eval_val_tgs_map_tuned\s+\d\.\d{4}", out), out[-3000:]
    metrics = MlflowClient(journey.uri).get_run(journey.run_id).data.metrics
    assert {"eval_val_tgs_map_tuned", "eval_best_threshold", "eval_artifact_excess"} <= set(metrics)


FRESH_PYTHON = textwrap.dedent("""
    import json, os, sys
    checkout, run_id, images_npy, out_npy = sys.argv[1:5]
    # No segnet from the checkout: drop the editable install's finder and the checkout's path entries
    # (the venv's site-packages may live under the checkout: keep it).
    sys.meta_path[:] = [f for f in sys.meta_path
                        if not getattr(f, "__module__", type(f).__module__).startswith("__editable__")]
    sys.path[:] = [p for p in sys.path if p and not (os.path.abspath(p).startswith(checkout)
                   and not os.path.abspath(p).startswith(sys.prefix))]
    try:
        import segnet
    except ImportError:
        pass
    else:
        raise SystemExit(f"segnet is importable from {segnet.__file__}: the test proves nothing")
    import mlflow
    import numpy as np
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    x = np.load(images_npy)
    out = model.predict(x)
    strict = model.predict(x, params={"threshold": 1.0})
    np.save(out_npy, out["mask"])
    print("RESULT", json.dumps({
        "segnet_from": sys.modules["segnet"].__file__,
        "keys": sorted(out), "mask_shape": list(out["mask"].shape), "mask_dtype": str(out["mask"].dtype),
        "prob_shape": list(out["probability"].shape), "prob_dtype": str(out["probability"].dtype),
        "prob_range": [float(out["probability"].min()), float(out["probability"].max())],
        "mask_is_prob_gt_threshold": bool(((out["probability"] > model.metadata.metadata["segnet"]["threshold"])
                                           == out["mask"].astype(bool)).all()),
        "strict_mask_sum": int(strict["mask"].sum()),
    }))
""")


def test_logged_model_loads_with_pyfunc_in_a_python_without_segnet(journey):
    from segnet.data.tgs import read_images

    images, ids = read_images(journey.data / "test" / "images")
    np.save(journey.tmp / "images.npy", images)
    script = journey.tmp / "fresh.py"
    script.write_text(FRESH_PYTHON)
    out = journey.run([sys.executable, str(script), str(paths.ROOT), journey.run_id,
                       str(journey.tmp / "images.npy"), str(journey.tmp / "pyfunc_masks.npy")])
    res = json.loads(out.split("RESULT ", 1)[1].splitlines()[0])
    assert not res["segnet_from"].startswith(str(paths.ROOT / "segnet")), res  # the model's own code copy
    assert res["keys"] == ["mask", "probability"]
    assert res["mask_shape"] == res["prob_shape"] == [len(ids), 101, 101]
    assert res["mask_dtype"] == "uint8" and res["prob_dtype"] == "float32"
    assert 0.0 <= res["prob_range"][0] <= res["prob_range"][1] <= 1.0
    assert res["mask_is_prob_gt_threshold"] and res["strict_mask_sum"] == 0
    if journey.submission is not None:  # the same masks as `segnet predict` wrote
        masks = np.load(journey.tmp / "pyfunc_masks.npy")
        sub = _submission_masks(journey.submission)
        for i, id_ in enumerate(ids):
            assert _agree(masks[i], sub[id_]) > 0.999, id_


def _get(url: str, timeout: float = 5.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except (urllib.error.URLError, OSError):
        return 0


def test_mlflow_models_serve_answers_invocations(journey):
    from segnet.data.tgs import read_images

    images, ids = read_images(journey.data / "test" / "images")
    port = free_port()
    log = (journey.tmp / "serve.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"runs:/{journey.run_id}/model",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        cwd=journey.tmp, env=journey.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while _get(f"{base}/ping") != 200:
            assert server.poll() is None, f"server exited {server.returncode}:\n{(journey.tmp / 'serve.log').read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no /ping in 180s:\n{(journey.tmp / 'serve.log').read_text()[-3000:]}"
            time.sleep(1)
        body = json.dumps({"inputs": images[:2].tolist()}).encode()
        req = urllib.request.Request(f"{base}/invocations", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            assert r.status == 200
            reply = json.loads(r.read())
    finally:  # the server's whole process group: mlflow's CLI and the uvicorn it started
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        log.close()
    pred = reply["predictions"]
    mask, prob = np.array(pred["mask"]), np.array(pred["probability"])
    assert mask.shape == prob.shape == (2, 101, 101)
    assert set(np.unique(mask)) <= {0, 1} and 0.0 <= prob.min() <= prob.max() <= 1.0
    if journey.submission is not None:
        sub = _submission_masks(journey.submission)
        for i in range(2):
            assert _agree(mask[i], sub[ids[i]]) > 0.999, ids[i]

"""`segnet evaluate` and `segnet predict` on a tiny trained run."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from segnet import paths
from segnet.config import load_config
from segnet.errors import DataError, SegnetError
from segnet.metrics.segmentation import GAP_PARTS

from .test_train import tiny_overrides


@pytest.fixture(scope="module")
def trained(tiny_synth, tmp_path_factory):
    """One tiny transposed run; MLFLOW_TRACKING_URI points at its store for the whole module."""
    from segnet.train import train

    tmp = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.setattr(paths, "RUNS_DIR", tmp / "runs")
    result = train(load_config(None, tiny_overrides(tiny_synth, uri)))
    yield result.run_id, uri
    mp.undo()


def _cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    """A segnet command in a fresh process: nothing this test process imported can help it."""
    return subprocess.run([sys.executable, "-m", "segnet", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def _env(uri: str | None) -> dict:
    env = {**os.environ, "SEGNET_RUNS_DIR": str(paths.RUNS_DIR), "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    if uri:
        env["MLFLOW_TRACKING_URI"] = uri
    return env


def test_evaluate_logs_eval_metrics_with_the_dataset_fingerprint(trained, tiny_synth):
    """`segnet evaluate --run-id ID tracking.uri=...` in a fresh process: the override names the store."""
    from segnet.data.tgs import fingerprint

    run_id, uri = trained
    out = _cli("evaluate", "--run-id", run_id, f"tracking.uri={uri}", env=_env(None))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    run = MlflowClient(uri).get_run(run_id)
    for key in ("val_tgs_map_tuned", "artifact_periodic_energy", "artifact_const_response", "best_threshold"):
        assert f"eval_{key}" in run.data.metrics
        assert re.search(rf"eval_{key}\s+-?\d", out.stdout), out.stdout
    # On the training dataset, evaluation uses the run's own validation fold and threshold: same numbers.
    m = run.data.metrics
    assert m["eval_val_tgs_map_tuned"] == pytest.approx(m["val_tgs_map_tuned"], abs=1e-6)
    assert m["eval_best_threshold"] == pytest.approx(m["best_threshold"], abs=1e-9)
    # where the score is lost: the parts add up to what the tuned score misses, at training and on evaluation
    for prefix in ("", "eval_"):
        lost = sum(m[f"{prefix}val_{k}"] for k in GAP_PARTS)
        assert m[f"{prefix}val_tgs_map_tuned"] + lost == pytest.approx(1.0, abs=1e-6)
        assert 0 <= m[f"{prefix}val_empty_fp_rate"] <= 1
    # data.limit=40 in the tiny config: a subset is fingerprinted as such.
    assert run.data.tags["segnet.eval_data_fingerprint"] == f"{fingerprint(tiny_synth)}-limit40"


def test_the_store_of_a_run_command(monkeypatch, tmp_path):
    """$MLFLOW_TRACKING_URI, else the tracking.uri override (the last one), else the default store."""
    from segnet.runs import store_uri

    a, b = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert store_uri([]) == paths.DEFAULT_TRACKING_URI
    assert store_uri(["data.limit=5", f"tracking.uri={a}"]) == a
    assert store_uri([f"tracking.uri={a}", f"tracking.uri={b}"]) == b
    assert store_uri([f"tracking.uri={a}", "tracking.uri=null"]) == paths.DEFAULT_TRACKING_URI
    monkeypatch.setenv("MLFLOW_TRACKING_URI", b)
    assert store_uri([f"tracking.uri={a}"]) == b


def test_the_logged_model_loads_uncompiled(trained):
    """segnet reads the Keras file inside the pyfunc model, without its training loss."""
    from segnet import tracking

    run_id, uri = trained
    (model,) = tracking.load_logged_models(uri, run_id)
    assert not model.compiled and model.output_shape[1:] == (64, 64, 1)


def test_evaluate_on_the_real_data(trained):
    from segnet.evaluate import evaluate_run

    real = paths.real_tgs_dir()
    if real is None:
        pytest.skip("real TGS data not found (../shared/datasets/tgs-salt or $TGS_DATA)")
    run_id, uri = trained
    evaluate_run(run_id, [f"data.dir={real}", "data.limit=200"])
    tags = MlflowClient(uri).get_run(run_id).data.tags
    assert tags["segnet.eval_dataset"] == "tgs" and tags["segnet.eval_subset"] == "all images"


def test_predict_writes_a_submission_that_round_trips(trained, tiny_synth, tmp_path):
    """`segnet predict` in a fresh process; its masks are the ones segnet.inference computes here."""
    from segnet.data.rle import rle_decode
    from segnet.data.tgs import read_images
    from segnet.predict import predict_masks
    from segnet.runs import load_run

    run_id, uri = trained
    out = tmp_path / "sub.csv"
    proc = _cli("predict", "--run-id", run_id, "--images", str(tiny_synth / "test" / "images"), "--out", str(out),
                "--tta", env=_env(uri))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "images/s" in proc.stdout and f"submission: {out}" in proc.stdout
    df = pd.read_csv(out, dtype={"id": str}, keep_default_na=False)
    images, ids = read_images(tiny_synth / "test" / "images")
    assert list(df.columns) == ["id", "rle_mask"] and sorted(df.id) == sorted(ids) and len(df) == len(ids)
    tr = load_run(run_id)
    expected = predict_masks(tr.model, tr.cfg, images, tr.threshold, tta=True, progress=False)
    by_id = dict(zip(df.id, df.rle_mask, strict=True))
    for i, id_ in enumerate(ids):
        np.testing.assert_array_equal(rle_decode(by_id[id_]).astype(bool), expected[i])


def test_predict_bad_input_leaves_nothing_behind(trained, tmp_path):
    from segnet.predict import predict_run

    run_id, _ = trained
    out = tmp_path / "sub.csv"
    with pytest.raises(SegnetError, match="not found"):
        predict_run(run_id, tmp_path / "nope", out)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SegnetError, match="no .png images"):
        predict_run(run_id, tmp_path / "empty", out)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "0123456789.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match="0123456789"):
        predict_run(run_id, bad, out)
    with pytest.raises(SegnetError, match="not found"):
        predict_run("0" * 32, bad, out)
    assert list(tmp_path.glob("*.csv")) == [] and list(tmp_path.glob(".*tmp")) == []


def test_cli_errors_are_one_line_and_exit_2(trained, tmp_path):
    _, uri = trained
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    out = subprocess.run([sys.executable, "-m", "segnet", "predict", "--run-id", "f" * 32, "--images",
                          str(tmp_path), "--out", str(tmp_path / "s.csv")], capture_output=True, text=True, env=env)
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("segnet: error:")]
    assert len(errors) == 1 and out.stderr.strip().splitlines()[-1] == errors[0] and "not found" in errors[0]
    assert "Traceback" not in out.stderr

"""`segnet evaluate` and `segnet predict` on a tiny trained run."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from segnet import paths
from segnet.config import load_config
from segnet.errors import DataError, SegnetError

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


def test_evaluate_logs_eval_metrics_with_the_dataset_fingerprint(trained, tiny_synth):
    from segnet.data.tgs import fingerprint
    from segnet.evaluate import evaluate_run

    run_id, uri = trained
    metrics = evaluate_run(run_id)
    run = MlflowClient(uri).get_run(run_id)
    for key in ("val_tgs_map_tuned", "artifact_periodic_energy", "artifact_const_response", "best_threshold"):
        assert f"eval_{key}" in run.data.metrics
    # On the training dataset, evaluation uses the run's own validation fold and threshold: same numbers.
    assert metrics["val_tgs_map_tuned"] == pytest.approx(run.data.metrics["val_tgs_map_tuned"], abs=1e-6)
    # data.limit=40 in the tiny config: a subset is fingerprinted as such.
    assert run.data.tags["segnet.eval_data_fingerprint"] == f"{fingerprint(tiny_synth)}-limit40"


def test_evaluate_on_the_real_data(trained):
    from segnet.evaluate import evaluate_run

    real = paths.real_tgs_dir()
    if real is None:
        pytest.skip("real TGS data not found (../shared/datasets/tgs-salt or $TGS_DATA)")
    run_id, uri = trained
    evaluate_run(run_id, [f"data.dir={real}", "data.limit=200"])
    tags = MlflowClient(uri).get_run(run_id).data.tags
    assert tags["segnet.eval_dataset"] == "tgs" and tags["segnet.eval_subset"] == "all images"


def test_predict_writes_a_submission_that_round_trips(trained, tiny_synth, tmp_path, capsys):
    from segnet.data.rle import rle_decode
    from segnet.data.tgs import read_images
    from segnet.predict import predict_masks, predict_run
    from segnet.runs import load_run

    run_id, _ = trained
    out = predict_run(run_id, tiny_synth / "test" / "images", tmp_path / "sub.csv", tta=True)
    df = pd.read_csv(out, dtype={"id": str}, keep_default_na=False)
    images, ids = read_images(tiny_synth / "test" / "images")
    assert list(df.columns) == ["id", "rle_mask"] and sorted(df.id) == sorted(ids) and len(df) == len(ids)
    tr = load_run(run_id)
    expected = predict_masks(tr.model, tr.cfg, images, tr.threshold, tta=True, progress=False)
    by_id = dict(zip(df.id, df.rle_mask, strict=True))
    for i, id_ in enumerate(ids):
        np.testing.assert_array_equal(rle_decode(by_id[id_]).astype(bool), expected[i])
    assert "images/s" in capsys.readouterr().out


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

"""Cosine annealing with warm restarts (``train.schedule: sgdr``) and its snapshot ensemble: the learning-rate
curve and the config rules; a two-cycle training as users run it (separate processes), its two snapshots,
its logged model (the mean of the snapshots' logits, computed here from their Keras files), `evaluate` and
`predict` on it; a SIGKILL in the second cycle, then resume, keeps the first cycle's snapshot."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from segnet.config import Config, load_config
from segnet.errors import ConfigError
from segnet.train import TrainState, cycle_starts, learning_rate

from .procs import metric_history, run, spawn, store_uri, tiny_overrides, wait_for_state

SGDR = ["train.schedule=sgdr", "train.cycles=2", "train.lr=0.003", "train.min_lr=0.0003"]


def _lrs(overrides: list[str]) -> list[float]:
    cfg = load_config(None, overrides)
    state = TrainState(lr=cfg.train.lr, const_init=0.0)
    return [learning_rate(cfg, e, state) for e in range(cfg.train.epochs)]


# -- the schedule and its config (no training) ---------------------------------------------------------
def test_sgdr_restarts_at_each_cycle_start_and_reaches_min_lr_at_each_cycle_end():
    assert cycle_starts(10, 3) == [0, 3, 6]  # 3, 3 and 4 epochs: the longer cycles last
    assert cycle_starts(4, 2) == [0, 2] and cycle_starts(5, 1) == [0] and cycle_starts(3, 3) == [0, 1, 2]
    lr, low = 0.01, 0.0001
    lrs = _lrs(["train.schedule=sgdr", "train.cycles=3", "train.epochs=10", f"train.lr={lr}", f"train.min_lr={low}"])
    for first, last in ((0, 2), (3, 5), (6, 9)):
        assert lrs[first] == pytest.approx(lr) and lrs[last] == pytest.approx(low)
        assert all(a > b for a, b in zip(lrs[first:last], lrs[first + 1 : last + 1], strict=True))
    assert lrs[7] == pytest.approx(low + 0.5 * (lr - low) * (1 + math.cos(math.pi / 3)))  # 1/3 into a 4-epoch cycle
    one = _lrs(["train.schedule=sgdr", "train.epochs=5", f"train.lr={lr}", f"train.min_lr={low}"])
    assert one[0] == pytest.approx(lr) and one[-1] == pytest.approx(low)  # one cycle: a cosine down to min_lr
    assert _lrs(["train.schedule=sgdr", "train.cycles=3", "train.epochs=3", f"train.lr={lr}"]) == [lr] * 3


def test_cycles_need_sgdr_and_an_epoch_each():
    with pytest.raises(ConfigError, match=r"'train.cycles' \(2\) needs train.schedule=sgdr"):
        load_config(None, ["train.cycles=2"])
    with pytest.raises(ConfigError, match=r"'train.cycles' \(6\) must be <= train.epochs \(5\)"):
        load_config(None, ["train.schedule=sgdr", "train.epochs=5", "train.cycles=6"])
    with pytest.raises(ConfigError, match="'train.cycles' must be in"):
        load_config(None, ["train.schedule=sgdr", "train.cycles=0"])
    with pytest.raises(ConfigError, match="'train.schedule' must be one of cosine, plateau, constant, sgdr"):
        load_config(None, ["train.schedule=restarts"])


def test_cycles_at_its_default_keeps_the_hashes_of_older_configs(monkeypatch):
    cfg = load_config()
    older = {k: v for k, v in cfg.flat().items() if k != "train.cycles"}  # a config from before the key
    monkeypatch.setattr(Config, "flat", lambda self: dict(older))
    older_hash = cfg.hash()
    monkeypatch.undo()
    assert cfg.hash() == older_hash
    sgdr = load_config(None, ["train.schedule=sgdr"])
    assert sgdr.hash() != load_config(None, ["train.schedule=sgdr", "train.cycles=2"]).hash()


class _Model:
    """Stands in for a Keras model: what it saves is the epoch it was at."""

    epoch = -1

    def save(self, path) -> None:
        Path(path).write_text(str(self.epoch))


def test_each_cycles_best_checkpoint_survives_a_restart_from_the_state(tmp_path):
    """The epoch loop's bookkeeping, without training: a state reloaded from disk mid-second-cycle (as a
    resumed run does) still names the first cycle's snapshot, whose file stays; a better epoch replaces
    only its own cycle's file."""
    from segnet.train import _save_checkpoint, _snapshot_improved

    cfg = load_config(None, ["train.schedule=sgdr", "train.cycles=2", "train.epochs=4"])
    state, model = TrainState(lr=0.003, const_init=0.0), _Model()
    _save_checkpoint(model, state, tmp_path, improved=False)
    for epoch, score in enumerate([0.5, 0.6, 0.4, 0.45]):
        if epoch == 3:
            state = TrainState.load(tmp_path)  # a restart in the second cycle
        model.epoch = state.epoch = epoch
        _save_checkpoint(model, state, tmp_path, improved=False, snapshot=_snapshot_improved(cfg, state, epoch, score))
    assert state.snapshots == ["snapshot_c0_e0002.keras", "snapshot_c1_e0004.keras"]
    assert state.snapshot_best == [0.6, 0.45] and state.snapshot_epoch == [1, 3]
    assert {p.name: p.read_text() for p in tmp_path.glob("*.keras")} == {
        "last_e0004.keras": "3", "snapshot_c0_e0002.keras": "1", "snapshot_c1_e0004.keras": "3"}
    # A state written before snapshots existed loads as a run without any.
    old = {k: v for k, v in json.loads((tmp_path / "state.json").read_text()).items() if "snapshot" not in k}
    (tmp_path / "state.json").write_text(json.dumps(old))
    assert TrainState.load(tmp_path).snapshots == []
    assert _snapshot_improved(load_config(), state, 3, 1.0) is None  # one cycle: no snapshots


class _Constant:
    """Stands in for a Keras model whose logits are ``value`` everywhere."""

    def __init__(self, value: float):
        self.value = value

    def __call__(self, x, training=False):  # as segnet.models.predict.forward calls a Keras model
        return np.full(x.shape, self.value, np.float32)


def test_a_fold_ensemble_of_snapshot_ensembles_weighs_every_network_alike():
    """A `segnet cv` of sgdr folds: every snapshot of every fold counts once (the mean of the fold means)."""
    from segnet.runs import TrainedRun

    cfg = load_config(None, ["data.size=101", "eval.tta=false"])

    def sgdr_fold(*logits: float) -> TrainedRun:
        snaps = [TrainedRun("fold", "", cfg, _Constant(v), 0.5, None) for v in logits]
        return TrainedRun("fold", "", cfg, None, 0.5, None, snaps, ensemble="snapshot")

    cv = TrainedRun("cv", "", cfg, None, 0.4, None, [sgdr_fold(1.0, 3.0), sgdr_fold(5.0, 7.0)], ensemble="fold")
    assert [n.model.value for n in cv.networks()] == [1.0, 3.0, 5.0, 7.0]
    predictor = cv.predictor()
    assert predictor.threshold == 0.4
    np.testing.assert_allclose(predictor.logits(np.zeros((2, 101, 101, 1), np.float32)), 4.0)


# -- a two-cycle training, as users run it ---------------------------------------------------------------
@pytest.fixture(scope="module")
def sgdr_run(tiny_synth, tmp_path_factory):
    """`segnet train` of 4 epochs in 2 sgdr cycles (epochs 1-2 and 3-4), its model logged, in its own store."""
    tmp = tmp_path_factory.mktemp("sgdr")
    over = [*tiny_overrides(tiny_synth, epochs=4), *SGDR]
    out = run(["train", *over, "tracking.log_model=true"], tmp)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run_id = re.search(r"^run_id: ([0-9a-f]{32})", out.stdout, re.M).group(1)
    return tmp, over, run_id, out.stdout


def _snapshot_logits(rdir, cfg, images) -> list[np.ndarray]:
    """Each snapshot's own 101x101 logits, from its Keras file in the run's folder."""
    import keras

    from segnet.inference import Predictor
    from segnet.models import register_with_keras

    register_with_keras()
    files = [rdir / f"snapshot_c{k}.keras" for k in range(cfg.train.cycles)]
    return [Predictor.from_config(keras.models.load_model(f, compile=False), cfg).logits(images) for f in files]


def test_two_cycles_keep_two_snapshots_and_log_their_ensemble(sgdr_run, tiny_synth, tmp_path):
    import mlflow

    from segnet import tracking
    from segnet.data import load_dataset
    from segnet.data.tgs import read_images
    from segnet.evaluate import read_probabilities
    from segnet.metrics.segmentation import sigmoid

    tmp, over, run_id, stdout = sgdr_run
    assert "sgdr: 2 cycle(s) of epochs 1-2, 3-4" in stdout
    assert "final evaluation of the snapshot ensemble (2 snapshots)" in stdout
    rdir = tmp / "runs" / run_id
    assert sorted(p.name for p in rdir.glob("*.keras")) == ["best.keras", "snapshot_c0.keras", "snapshot_c1.keras"]
    assert json.loads((rdir / "state.json").read_text())["snapshots"] == ["snapshot_c0.keras", "snapshot_c1.keras"]

    # Warm restarts at epochs 1 and 3; each snapshot is its cycle's best epoch.
    uri = store_uri(tmp)
    m = MlflowClient(uri).get_run(run_id).data.metrics
    assert [v for _, v in metric_history(tmp, run_id, "lr")] == pytest.approx([0.003, 0.0003, 0.003, 0.0003])
    scores = [v for _, v in metric_history(tmp, run_id, "val_tgs_map")]
    assert m["snapshots"] == 2 and m["best_val_tgs_map"] == pytest.approx(max(scores))
    for k, cycle in enumerate((scores[:2], scores[2:])):
        assert m[f"snapshot{k}_val_tgs_map"] == pytest.approx(max(cycle))
        assert m[f"snapshot{k}_epoch"] == 2 * k + int(np.argmax(cycle)) + 1

    # The logged model predicts the mean of the snapshots' logits.
    cfg = load_config(None, over)
    images, _ = read_images(tiny_synth / "test" / "images")
    alone = _snapshot_logits(rdir, cfg, images)
    assert not np.allclose(alone[0], alone[1], atol=1e-3)  # two different networks
    want = sigmoid(np.mean(alone, axis=0))
    mlflow.set_tracking_uri(uri)
    out = mlflow.pyfunc.load_model(f"runs:/{run_id}/model").predict(images)
    np.testing.assert_allclose(out["probability"], want, rtol=1e-4, atol=1e-5)
    assert np.array_equal(out["mask"], (want > m["best_threshold"]).astype(np.uint8))
    logged = tracking.download_logged_keras(uri, run_id, tmp_path)  # what evaluate, predict and cv read
    assert [f.read_bytes() for f in logged] == [(rdir / f"snapshot_c{k}.keras").read_bytes() for k in range(2)]

    # The final evaluation was the ensemble's: its validation probabilities are the snapshots' mean.
    ids, probs = read_probabilities(MlflowClient(uri).download_artifacts(run_id, "predictions/val_probs.npz", str(tmp)))
    data = load_dataset(cfg)
    val = data.images[[data.ids.index(i) for i in ids]]
    np.testing.assert_allclose(probs, sigmoid(np.mean(_snapshot_logits(rdir, cfg, val), axis=0)), atol=2e-3)


def test_evaluate_scores_the_snapshot_ensemble(sgdr_run):
    tmp, _, run_id, _ = sgdr_run
    out = run(["evaluate", "--run-id", run_id], tmp)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert f"evaluate: the snapshot ensemble of run {run_id} (2 snapshots)" in out.stdout
    m = MlflowClient(store_uri(tmp)).get_run(run_id).data.metrics
    # Its validation fold at its threshold: the numbers of the ensemble evaluated at the end of training.
    for key in ("val_tgs_map_tuned", "val_tgs_map_plain", "artifact_periodic_energy", "best_threshold"):
        assert m[f"eval_{key}"] == pytest.approx(m[key], abs=1e-6), key


def test_predict_with_the_snapshot_ensemble(sgdr_run, tiny_synth):
    from segnet.data.rle import rle_decode
    from segnet.data.tgs import read_images
    from segnet.metrics.segmentation import sigmoid

    tmp, over, run_id, _ = sgdr_run
    csv = tmp / "submission.csv"
    out = run(["predict", "--run-id", run_id, "--images", str(tiny_synth / "test" / "images"), "--out", str(csv)], tmp)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "snapshot ensemble of 2 models" in out.stdout
    images, ids = read_images(tiny_synth / "test" / "images")
    threshold = MlflowClient(store_uri(tmp)).get_run(run_id).data.metrics["best_threshold"]
    want = sigmoid(np.mean(_snapshot_logits(tmp / "runs" / run_id, load_config(None, over), images), axis=0)) > threshold
    sub = pd.read_csv(csv, dtype=str, keep_default_na=False).set_index("id")
    for i, id_ in enumerate(ids):
        np.testing.assert_array_equal(rle_decode(sub.loc[id_, "rle_mask"]).astype(bool), want[i])


@pytest.mark.slow
def test_sigkill_in_the_second_cycle_then_resume_keeps_the_first_snapshot(sgdr_run, tmp_path):
    ref_tmp, over, ref_id, _ = sgdr_run  # the same config, never interrupted
    first = spawn(["train", *over], tmp_path)
    state_file = wait_for_state(first, tmp_path / "runs", 2)
    first.kill()  # SIGKILL after the first epoch of the second cycle
    first.communicate()
    state = json.loads(state_file.read_text())
    assert state["epoch"] == 2 and len(state["snapshots"]) == 2, state
    snap0 = state_file.parent / state["snapshots"][0]
    inode = snap0.stat().st_ino

    again = run(["train", *over, "train.resume=true"], tmp_path)
    run_id = state_file.parent.name
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resume: run {run_id} from epoch 4 of 4" in again.stdout
    # The first cycle's snapshot is the very file written before the kill, renamed at the end.
    assert (state_file.parent / "snapshot_c0.keras").stat().st_ino == inode
    got, want = (MlflowClient(store_uri(d)).get_run(r).data.metrics for d, r in ((tmp_path, run_id), (ref_tmp, ref_id)))
    for k in range(2):
        assert got[f"snapshot{k}_epoch"] == want[f"snapshot{k}_epoch"]
        assert got[f"snapshot{k}_val_tgs_map"] == pytest.approx(want[f"snapshot{k}_val_tgs_map"], abs=1e-5)
    for key in ("loss", "val_tgs_map", "lr"):
        a, b = metric_history(tmp_path, run_id, key), metric_history(ref_tmp, ref_id, key)
        assert [s for s, _ in a] == [s for s, _ in b] == [0, 1, 2, 3], key  # every epoch once
        assert [v for _, v in a] == pytest.approx([v for _, v in b], rel=1e-4, abs=1e-5), key

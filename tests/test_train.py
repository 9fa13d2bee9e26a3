"""Training end to end on tiny synthetic data, into a temporary MLflow store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from segnet import paths
from segnet.config import load_config
from segnet.errors import SegnetError
from segnet.models.decoders import DECODERS
from tests.procs import segnet_env

REQUIRED_EPOCH_METRICS = ("loss", "val_loss", "val_iou", "val_tgs_map", "lr", "epoch_time_s", "train_images_per_s")
REQUIRED_FINAL_METRICS = (
    "best_val_tgs_map", "best_val_iou", "best_threshold", "params_count", "train_time_s",
    "artifact_periodic_energy", "artifact_periodic_energy_gt", "artifact_excess", "artifact_const_response",
    "artifact_const_response_init", "artifact_overlap_unevenness",
)
REQUIRED_TAGS = ("segnet.decoder", "segnet.variant", "segnet.dataset", "segnet.data_fingerprint",
                 "mlflow.source.git.commit")
REQUIRED_ARTIFACTS = ("config.yaml", "plots/learning_curves.png", "plots/spectra.png", "plots/const_response.png",
                      "plots/overlays_worst.png", "plots/overlays_best.png", "plots/score_gaps.png",
                      "predictions/val_scores.csv")


def tiny_overrides(data_dir: Path, uri: str) -> list[str]:
    return [f"data.dir={data_dir}", "data.size=64", "data.resize_mode=resize", "data.limit=40", "data.n_folds=4",
            "model.filters=4", "model.depth=3", "train.epochs=2", "train.batch_size=8", "eval.overlays=2",
            f"tracking.uri={uri}", "tracking.experiment=test"]


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(paths, "RUNS_DIR", tmp_path / "runs")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _artifact_paths(client: MlflowClient, run_id: str, path: str = "") -> set[str]:
    out = set()
    for f in client.list_artifacts(run_id, path or None):
        out.add(f.path)
        if f.is_dir:
            out |= _artifact_paths(client, run_id, f.path)
    return out


# The default decoder and the one with pooling indices in the fast suite; every decoder builds, trains a
# step, saves and reloads in tests/test_decoders.py, so the other full runs are `slow`.
_FAST = ("transposed", "maxunpool")


@pytest.mark.parametrize("decoder", [d if d in _FAST else pytest.param(d, marks=pytest.mark.slow)
                                     for d in sorted(DECODERS)])
def test_two_epoch_run_is_complete_in_mlflow(decoder, tiny_synth, store):
    from segnet.train import train

    cfg = load_config(None, [*tiny_overrides(tiny_synth, store), f"model.decoder={decoder}"])
    result = train(cfg)
    client = MlflowClient(store)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    for key in REQUIRED_FINAL_METRICS:  # all finite, but artifact_excess is NaN when the truth has no periodic energy
        nan_expected = key == "artifact_excess" and not run.data.metrics["artifact_periodic_energy_gt"] > 0
        assert key in run.data.metrics and (np.isnan if nan_expected else np.isfinite)(run.data.metrics[key]), key
    for key in REQUIRED_EPOCH_METRICS:
        steps = [m.step for m in client.get_metric_history(result.run_id, key)]
        assert steps == [0, 1], (key, steps)
    for tag in REQUIRED_TAGS:
        assert run.data.tags.get(tag), tag
    assert run.data.tags["segnet.decoder"] == decoder and run.data.tags["segnet.dataset"] == "synthetic"
    assert run.data.params["model.decoder"] == decoder and run.data.params["train.epochs"] == "2"
    arts = _artifact_paths(client, result.run_id)
    for a in REQUIRED_ARTIFACTS:
        assert a in arts, (a, sorted(arts))
    # MLflow 3 keeps the model as a LoggedModel linked to its run (shown in the run's page).
    logged = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id='{result.run_id}'")
    assert [m.name for m in logged] == ["model"]
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"

    # The logged model reloads through the generic pyfunc API and predicts what the checkpoint predicts
    # (101x101 images in, the salt probability and the thresholded mask out).
    import keras

    from segnet.inference import Predictor

    mlflow.set_tracking_uri(store)
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{result.run_id}/model")
    x = np.random.default_rng(0).random((3, 101, 101, 1), dtype=np.float32)
    best = keras.models.load_model(paths.RUNS_DIR / result.run_id / "best.keras", compile=False)
    ref = Predictor.from_config(best, cfg, run.data.metrics["best_threshold"]).probabilities(x)
    out = pyfunc.predict(x)
    np.testing.assert_allclose(out["probability"], ref, rtol=1e-4, atol=1e-5)
    assert np.array_equal(out["mask"], (ref > run.data.metrics["best_threshold"]).astype(np.uint8))


def test_salt_weight_reaches_both_compiles_of_a_run(tiny_synth, store, monkeypatch, tmp_path):
    """train.salt_weight weighs the classifier at the start and again when the fine-tune loss recompiles."""
    from segnet.models import heads
    from segnet.train import train

    seen = []
    compile_losses = heads.compile_losses

    def spy(model, loss_name, salt_weight=None):
        losses, weights = compile_losses(model, loss_name, salt_weight)
        seen.append((loss_name, weights["salt"]))
        return losses, weights

    monkeypatch.setattr(heads, "compile_losses", spy)
    cfg = load_config(None, [*tiny_overrides(tiny_synth, store), "train.epochs=2", "tracking.log_model=false",
                             "model.deep_supervision=true", "train.salt_weight=0.5", "train.lovasz_epochs=1",
                             "train.finetune_loss=lovasz_elu"])
    result = train(cfg)
    assert seen == [("bce_dice", 0.5), ("lovasz_elu", 0.5)]

    # README's experiment on the gate (docs/experiments/gate_probe.py) runs on such a run, as a user runs it.
    out = subprocess.run([sys.executable, str(paths.ROOT / "docs/experiments/gate_probe.py"), result.run_id,
                          str(tiny_synth)], capture_output=True, text=True, cwd=paths.ROOT, timeout=600,
                         env={**segnet_env(tmp_path), "MLFLOW_TRACKING_URI": store})
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 6 and rows[1].startswith("| the model's own head"), out.stdout


def test_failed_run_ends_failed(tiny_synth, store, monkeypatch):
    from segnet import evaluate
    from segnet.train import train

    def boom(*a, **k):
        raise RuntimeError("evaluation broke")

    monkeypatch.setattr(evaluate, "evaluate_and_log", boom)
    cfg = load_config(None, [*tiny_overrides(tiny_synth, store), "train.epochs=1", "tracking.log_model=false"])
    with pytest.raises(RuntimeError, match="evaluation broke"):
        train(cfg)
    runs = MlflowClient(store).search_runs([MlflowClient(store).get_experiment_by_name("test").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


@pytest.mark.slow  # ~30 s; `make gpu-check` runs MirroredStrategy on real devices (make test-all)
def test_mirrored_strategy_on_two_logical_cpus(tiny_synth, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = f"""
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from segnet.config import load_config
from segnet.errors import SegnetError
from segnet.train import train, make_strategy
assert make_strategy("mirrored").num_replicas_in_sync == 2
cfg = load_config(None, {tiny_overrides(tiny_synth, uri)!r} + ["train.strategy=mirrored", "train.epochs=1",
                  "tracking.log_model=false"])
r = train(cfg)
print("OK", r.metrics["best_val_tgs_map"])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=segnet_env(tmp_path),
                         cwd=paths.ROOT,
                         timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout[-2000:] + out.stderr[-3000:]


@pytest.mark.slow
def test_quick_profile_learns_the_synthetic_data(tmp_path, monkeypatch):
    """The default `make train` setting on the default synthetic data (generated on first use)."""
    from segnet.train import train

    monkeypatch.setattr(paths, "RUNS_DIR", tmp_path / "runs")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = train(load_config(None, [f"tracking.uri={uri}", "tracking.log_model=false"]))
    # Measured on 2 CPU cores (transposed, seed 42): best_val_tgs_map 0.748, tuned 0.785. Bound below it.
    assert result.metrics["best_val_tgs_map"] > 0.65


def test_resume_only_takes_over_a_run_of_the_same_parent(tmp_path, monkeypatch):
    """A CV fold (or ablation child) and a plain training of the same config never resume each other."""
    from segnet import tracking
    from segnet.train import find_resumable

    monkeypatch.setattr(paths, "RUNS_DIR", tmp_path / "runs")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(None, ["tracking.experiment=test"])
    parent = tracking.create_run(uri, "test", "cv", {})
    child = tracking.create_run(uri, "test", "fold", {"segnet.config_hash": cfg.hash()}, parent_run_id=parent.run_id)
    plain = tracking.create_run(uri, "test", "plain", {"segnet.config_hash": cfg.hash()})
    for r in (child, plain):
        (paths.RUNS_DIR / r.run_id).mkdir(parents=True)
        (paths.RUNS_DIR / r.run_id / "state.json").write_text("{}")
        r.end("KILLED")
    found, lock = find_resumable(cfg, uri, parent.run_id)
    lock.release()
    assert found == child.run_id
    found, lock = find_resumable(cfg, uri, None)
    lock.release()
    assert found == plain.run_id
    assert find_resumable(cfg, uri, "another-parent") is None


def test_resume_finds_runs_by_data_or_by_path(tmp_path, monkeypatch, tiny_synth):
    """Runs and parents are found by the data's hash and by the path hash: a run an older version tagged
    with the path hash only; a run made where the data is, looked for from a host without the folder (its
    config hashes by path there); a parent likewise."""
    import shutil

    from segnet import tracking
    from segnet.children import ParentSpec, find_or_create_parent
    from segnet.train import find_resumable

    monkeypatch.setattr(paths, "RUNS_DIR", tmp_path / "runs")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    data = shutil.copytree(tiny_synth, tmp_path / "data")
    cfg = load_config(None, ["tracking.experiment=test", f"data.dir={data}"])
    assert cfg.hash() != cfg.path_hash()

    def killed_run(name: str, tags: dict) -> str:
        r = tracking.create_run(uri, "test", name, tags)
        (paths.RUNS_DIR / r.run_id).mkdir(parents=True)
        (paths.RUNS_DIR / r.run_id / "state.json").write_text("{}")
        r.end("KILLED")
        return r.run_id

    def resumable(c) -> str | None:
        found = find_resumable(c, uri, None)
        if found is None:
            return None
        found[1].release()
        return found[0]

    old = killed_run("old", {"segnet.config_hash": cfg.path_hash()})  # an older version's tags
    assert resumable(cfg) == old
    new = killed_run("new", {"segnet.config_hash": cfg.hash(), "segnet.config_path_hash": cfg.path_hash()})
    assert resumable(cfg) == new  # the newest of both
    data.rename(tmp_path / "elsewhere")  # a host without the folder: the config hashes by path
    assert cfg.hashes() == [cfg.path_hash()] and resumable(cfg) == new

    spec = ParentSpec("cv", "datahash", "test", "cv", path_hash="pathhash")
    made, lock = find_or_create_parent(uri, spec, None)
    lock.release()
    made.end("KILLED")
    assert tracking.get_run(uri, made.run_id).data.tags["segnet.cv_path_hash"] == "pathhash"
    older = tracking.create_run(uri, "test", "cv-old", {"segnet.role": "cv", "segnet.cv_hash": "pathhash2"})
    older.end("KILLED")
    no_data = ParentSpec("cv", "pathhash", "test", "cv", path_hash="pathhash")
    old_spec = ParentSpec("cv", "datahash2", "test", "cv", path_hash="pathhash2")
    for s, want in ((no_data, made.run_id), (old_spec, older.run_id)):
        for resume in (None, want):
            parent, lock = find_or_create_parent(uri, s, resume)
            lock.release()
            assert parent.run_id == want
    with pytest.raises(SegnetError, match="another cv config"):
        find_or_create_parent(uri, ParentSpec("cv", "x", "test", "cv", path_hash="y"), made.run_id)


def test_resuming_the_initial_checkpoint_is_silent(tmp_path):
    """A run killed in its first epoch resumes from the model saved before it, whose optimizer has no
    state yet: no Keras warning about skipped optimizer variables there; a later checkpoint still loads
    its optimizer's state."""
    import warnings

    import keras

    from segnet.models import build_model
    from segnet.train import compile_model, load_checkpoint

    cfg = load_config(None, ["data.size=32", "model.filters=4", "model.depth=2"])
    model = build_model(cfg)
    compile_model(model, keras.optimizers.Adam(1e-3), cfg.train.loss)
    model.save(tmp_path / "last_e0000.keras")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_checkpoint(tmp_path / "last_e0000.keras", initial=True)
    assert not [w for w in caught if "optimizer" in str(w.message)], [str(w.message) for w in caught]
    x = np.zeros((2, 32, 32, 1), np.float32)
    loaded.fit(x, {k: np.zeros((2, 32, 32, 1), np.float32) for k in loaded.output_names} if len(loaded.outputs) > 1
               else np.zeros((2, 32, 32, 1), np.float32), epochs=1, verbose=0)
    loaded.save(tmp_path / "last_e0001.keras")
    again = load_checkpoint(tmp_path / "last_e0001.keras")
    assert again.optimizer.iterations.numpy() == 1  # the optimizer's state came back

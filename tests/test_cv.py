"""Cross-validation: `segnet cv` as users run it (separate processes), its out-of-fold table, the fold
ensemble behind `predict` / `evaluate --run-id <cv run>`, a restart that trains nothing, and ablation
plans over folds."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from segnet import paths
from segnet.ablate import plan as ablation_plan
from segnet.children import child_command
from segnet.config import load_config
from segnet.cv import SCORE_COLUMNS
from segnet.cv import plan as cv_plan
from segnet.errors import ConfigError, SegnetError
from segnet.metrics.segmentation import GAP_PARTS

from .procs import run, run_statuses, store_uri, tiny_overrides

CV_MODEL = "segnet-cv-test"  # the registered model the cv fixture's fold ensemble goes to


# -- ablation over folds (plans only, no training) --------------------------------------------------
def _ablation(tmp_path, **extra):
    f = tmp_path / "ablation.yaml"
    f.write_text(yaml.safe_dump({"seeds": 2, "overrides": ["data.n_folds=3"],
                                 "variants": {"a": {"model.decoder": "transposed"},
                                              "b": {"model.decoder": "upsampling"}}, **extra}))
    return f


def test_ablation_over_all_folds_plans_variant_seed_fold(tmp_path):
    one = ablation_plan(_ablation(tmp_path))
    assert one.folds == [0] and [(c.variant, c.seed, c.fold) for c in one.children] == [
        ("a", 42, 0), ("a", 43, 0), ("b", 42, 0), ("b", 43, 0)]
    # The default keeps the hash of the ablations made before `folds` existed, so they are found again.
    old = [[c.variant, c.seed, c.cfg.hash()] for c in one.children]
    assert one.hash == hashlib.sha256(json.dumps(old).encode()).hexdigest()[:12]
    assert ablation_plan(_ablation(tmp_path, folds=[0])).hash == one.hash

    p = ablation_plan(_ablation(tmp_path, folds="all"))
    assert p.folds == [0, 1, 2] and p.n_seeds == 2
    assert [(c.variant, c.seed, c.fold) for c in p.children] == [
        (v, s, k) for v in ("a", "b") for s in (42, 43) for k in range(3)]
    assert [c.cfg.data.fold for c in p.children] == [c.fold for c in p.children]
    assert len({c.cfg.hash() for c in p.children}) == 12 and p.hash != one.hash
    assert p.children[1].label == "a s42 f1"
    argv = child_command(p.children[1], None, "P")
    assert "segnet.fold=1" in argv and "segnet.ablation_id=P" in argv and "data.fold=1" in argv
    assert [c.fold for c in ablation_plan(_ablation(tmp_path, folds=[2, 0])).children[:2]] == [2, 0]


def test_plans_hash_a_data_folder_by_its_data_and_keep_the_path_hash(tiny_synth, tmp_path, monkeypatch):
    """An ablation or a cv restarted with data.dir spelled another way continues the same parent: the
    plan hash follows the data; the path hash (from the children's path hashes, what older versions
    computed) is what finds parents made by them or on a host without the data."""
    monkeypatch.chdir(tiny_synth.parent)
    rel, absolute = ["data.dir=synthetic"], [f"data.dir={tiny_synth}/"]
    a, b = ablation_plan(_ablation(tmp_path), rel), ablation_plan(_ablation(tmp_path), absolute)
    assert a.hash == b.hash and a.path_hash != b.path_hash
    old = [[c.variant, c.seed, c.cfg.path_hash()] for c in a.children]  # as older versions computed it
    assert a.path_hash == hashlib.sha256(json.dumps(old).encode()).hexdigest()[:12]
    c, d = cv_plan(None, [*rel, "data.n_folds=2"]), cv_plan(None, [*absolute, "data.n_folds=2"])
    assert c.hash == d.hash and c.path_hash != d.path_hash
    assert c.path_hash == hashlib.sha256(json.dumps(
        ["cv", [k.cfg.path_hash() for k in c.children]]).encode()).hexdigest()[:12]


@pytest.mark.parametrize("folds", [[3], [0, 0], "some", [], [True]])
def test_bad_folds_fail_before_training(tmp_path, folds):
    with pytest.raises(ConfigError, match="'folds'"):
        ablation_plan(_ablation(tmp_path, folds=folds))


# -- segnet cv end to end ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cv_run(tiny_synth, tmp_path_factory):
    """One `segnet cv --jobs 2` of two one-epoch folds of the tiny model, in its own store, registering its
    fold ensemble (``tracking.register``)."""
    tmp = tmp_path_factory.mktemp("cv")
    over = [*tiny_overrides(tiny_synth, epochs=1), "data.n_folds=2", "tracking.log_model=true",
            f"tracking.register={CV_MODEL}"]
    out = run(["cv", "--jobs", "2", *over], tmp)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    parent = re.search(r"^cv_run_id: ([0-9a-f]{32})", out.stdout, re.M).group(1)
    return tmp, over, parent, out.stdout


def test_cv_logs_every_image_once_out_of_fold(cv_run):
    from segnet.data import load_dataset
    from segnet.data.folds import load_or_make_folds

    tmp, over, parent, stdout = cv_run
    assert "[fold 0] epoch   1/1" in stdout and "2/2 done, 0 running, 0 pending" in stdout
    client = MlflowClient(store_uri(tmp))
    info = client.get_run(parent)
    assert info.info.status == "FINISHED" and info.data.tags["segnet.role"] == "cv"
    m = info.data.metrics
    assert {"oof_tgs_map", "oof_iou", "oof_threshold", "fold_tgs_map_mean", "fold_tgs_map_std"} <= set(m)

    scores = pd.read_csv(client.download_artifacts(parent, "oof/scores.csv", str(tmp)), dtype={"id": str})
    assert list(scores.columns) == SCORE_COLUMNS
    cfg = load_config(None, over)
    data = load_dataset(cfg)
    assert len(scores) == len(data.ids) == 40 and sorted(scores.id) == sorted(data.ids)  # each image once
    folds = load_or_make_folds(data.ids, data.masks, cfg.data.n_folds, cfg.data.fold_seed).set_index("id")
    assert (scores.fold.to_numpy() == folds.loc[scores.id, "fold"].to_numpy()).all()  # its own fold
    assert m["oof_tgs_map"] == pytest.approx(scores.tgs.mean()) and m["oof_iou"] == pytest.approx(scores.iou.mean())
    assert m["oof_tgs_map"] + sum(m[f"oof_{k}"] for k in GAP_PARTS) == pytest.approx(1.0)
    assert "cv: out-of-fold score lost to salt predicted on an empty image" in stdout
    assert "plots/oof_score_gaps.png" in {f.path for f in client.list_artifacts(parent, "plots")}
    # the parent's dataset input: the folder its folds trained on (every image scored out of fold)
    ((name, digest, ctx),) = [(d.dataset.name, d.dataset.digest, d.tags[0].value) for d in info.inputs.dataset_inputs]
    assert (name, ctx) == ("synthetic", "cross-validation") and digest == info.data.tags["segnet.data_fingerprint"]

    kids = client.search_runs([info.info.experiment_id], f"tags.`segnet.cv_id` = '{parent}'")
    assert sorted(int(r.data.tags["segnet.fold"]) for r in kids) == [0, 1]
    assert {r.data.tags["mlflow.parentRunId"] for r in kids} == {parent}
    for r in kids:  # each fold's dataset inputs: the folder it trained on and its own validation fold
        k = int(r.data.tags["segnet.fold"])
        inputs = {next(t.value for t in di.tags if t.key == "mlflow.data.context"): di.dataset
                  for di in client.get_run(r.info.run_id).inputs.dataset_inputs}
        assert set(inputs) == {"training", "validation"}
        assert inputs["training"].name == "synthetic" and inputs["validation"].name == f"synthetic/fold-{k}-of-2"
        assert {ds.digest for ds in inputs.values()} == {data.fingerprint} == {info.data.tags["segnet.data_fingerprint"]}
        assert {json.loads(ds.source)["uri"] for ds in inputs.values()} == {str(data.dir.resolve())}
        assert json.loads(inputs["validation"].profile)["num_rows"] == int((folds.fold == k).sum())
    finals = [r.data.metrics["val_tgs_map_tuned"] for r in kids]
    assert m["fold_tgs_map_mean"] == pytest.approx(np.mean(finals))
    assert m["fold_tgs_map_std"] == pytest.approx(np.std(finals, ddof=1))
    saved = yaml.safe_load(open(client.download_artifacts(parent, "config.yaml", str(tmp))).read())
    assert saved["data"]["n_folds"] == 2 and saved["model"]["decoder"] == cfg.model.decoder


def test_fold_ensemble_is_the_mean_of_the_fold_models(cv_run, tiny_synth, tmp_path, monkeypatch):
    """In process: the ensemble's logits are the mean of the fold models' logits; a fold's run predicts alone;
    `evaluate` scores the ensemble on another labelled folder and refuses the data it was trained on."""
    from segnet.data.synthetic import generate
    from segnet.data.tgs import read_images
    from segnet.evaluate import evaluate_run
    from segnet.inference import Predictor
    from segnet.runs import load_run

    tmp, _, parent, _ = cv_run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri(tmp))
    monkeypatch.setattr(paths, "RUNS_DIR", tmp / "runs")
    tr = load_run(parent)
    assert [m.cfg.data.fold for m in tr.members] == [0, 1]
    assert tr.threshold == MlflowClient(store_uri(tmp)).get_run(parent).data.metrics["oof_threshold"]
    images, _ = read_images(tiny_synth / "test" / "images")
    ens = tr.predictor()
    alone = [Predictor.from_config(m.model, m.cfg, tta=tr.cfg.eval.tta).logits(images) for m in tr.members]
    np.testing.assert_allclose(ens.logits(images), np.mean(alone, axis=0), rtol=1e-5, atol=1e-5)
    assert (ens.masks(images) == (ens.probabilities(images) > tr.threshold)).all()
    # The parent's logged model is the same ensemble, for mlflow.pyfunc (and so for the registry and serving).
    import mlflow

    mlflow.set_tracking_uri(store_uri(tmp))
    served = mlflow.pyfunc.load_model(f"runs:/{parent}/model").predict(images)
    np.testing.assert_allclose(served["probability"], ens.probabilities(images), rtol=1e-4, atol=1e-5)
    assert np.array_equal(served["mask"], ens.masks(images).astype(np.uint8))
    fold0 = load_run(tr.members[0].run_id)
    assert fold0.members == [] and fold0.model is not None

    with pytest.raises(SegnetError, match="another labelled folder"):
        evaluate_run(parent)
    other = generate(tmp_path / "other", n=12, seed=1, progress=False)
    metrics = evaluate_run(parent, [f"data.dir={other}"])
    assert metrics["ensemble_models"] == 2 and metrics["best_threshold"] == tr.threshold
    logged = MlflowClient(store_uri(tmp)).get_run(parent).data
    assert logged.metrics["eval_val_tgs_map_tuned"] == pytest.approx(metrics["val_tgs_map_tuned"])
    assert logged.tags["segnet.eval_subset"] == "all images"
    assert metrics["val_tgs_map_tuned"] + sum(metrics[f"val_{k}"] for k in GAP_PARTS) == pytest.approx(1.0)
    assert "eval/plots/score_gaps.png" in {f.path for f in MlflowClient(store_uri(tmp)).list_artifacts(parent, "eval/plots")}


def test_cv_registers_its_fold_ensemble(cv_run):
    """`tracking.register` on a cv: the parent's logged fold ensemble becomes a version with alias champion,
    tagged with the variant, the out-of-fold scores and the data fingerprint; `segnet register --run-id
    <cv run>` by hand does the same under another name."""
    tmp, _, parent, stdout = cv_run
    client = MlflowClient(store_uri(tmp))
    info = client.get_run(parent)
    mv = client.get_model_version_by_alias(CV_MODEL, "champion")
    assert mv.run_id == parent and str(mv.version) == "1", (mv.run_id, mv.version)
    assert f"registered: run {parent} as {CV_MODEL} version 1" in stdout
    assert info.data.tags["segnet.registered_model"] == f"{CV_MODEL}/1"
    assert mv.source.startswith("models:/m-"), mv.source  # an sqlite store keeps the model id in the source
    logged = client.get_logged_model(mv.source.removeprefix("models:/"))
    assert logged.source_run_id == parent and logged.name == "model"  # the parent's model: the ensemble
    assert mv.tags["segnet.role"] == "cv" and mv.tags["segnet.variant"] == info.data.tags["segnet.variant"]
    assert mv.tags["segnet.data_fingerprint"] == info.data.tags["segnet.data_fingerprint"]
    for m in ("oof_tgs_map", "oof_iou", "oof_threshold", "fold_tgs_map_mean"):
        assert float(mv.tags[f"segnet.{m}"]) == pytest.approx(info.data.metrics[m], abs=1e-4), m
    assert "fold ensemble" in mv.description and "oof_tgs_map" in mv.description

    by_hand = run(["register", "--run-id", parent, "--name", "segnet-cv-by-hand", "--alias", ""], tmp)
    assert by_hand.returncode == 0, by_hand.stdout[-2000:] + by_hand.stderr[-3000:]
    mv2 = client.get_model_version("segnet-cv-by-hand", "1")
    assert mv2.run_id == parent and not mv2.aliases
    assert client.get_logged_model(mv2.source.removeprefix("models:/")).source_run_id == parent
    assert mv2.tags["segnet.oof_tgs_map"] == mv.tags["segnet.oof_tgs_map"]


def test_cv_register_needs_a_logged_model():
    with pytest.raises(ConfigError, match="tracking.log_model"):  # before any work
        cv_plan(None, ["tracking.register=x", "tracking.log_model=false", "data.n_folds=2"])


def test_predict_with_the_fold_ensemble_writes_a_submission(cv_run, tiny_synth):
    """Through the registry: `--model models:/<name>@champion` of a cv is its parent's fold ensemble."""
    tmp, _, parent, _ = cv_run
    out_csv = tmp / "submission.csv"
    out = run(["predict", "--model", f"models:/{CV_MODEL}@champion", "--images", str(tiny_synth / "test" / "images"),
               "--out", str(out_csv)], tmp)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert f"is run {parent}" in out.stdout and "fold ensemble of 2 models" in out.stdout
    sub = pd.read_csv(out_csv, dtype=str, keep_default_na=False)
    assert list(sub.columns) == ["id", "rle_mask"] and len(sub) == len(list((tiny_synth / "test/images").glob("*.png")))


def test_restarted_cv_keeps_the_finished_folds(cv_run):
    tmp, over, parent, _ = cv_run
    runs_before = run_statuses(tmp)
    again = run(["cv", *over], tmp)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"cv_run_id: {parent}" in again.stdout and "2 finished children kept, 0 to train" in again.stdout
    assert "[fold" not in again.stdout  # no child process was started
    assert run_statuses(tmp).keys() == runs_before.keys()
    assert set(run_statuses(tmp).values()) == {"FINISHED"}
    versions = MlflowClient(store_uri(tmp)).search_model_versions(f"name = '{CV_MODEL}'")
    assert [str(v.version) for v in versions] == ["1"]  # registered again: the same version

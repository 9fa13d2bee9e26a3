"""Cross-validation: one `segnet train` child per fold under one parent run, the out-of-fold score, and
the fold ensemble that `segnet predict` and `segnet evaluate` use through the parent's run id.

The children (``data.fold=k`` for k in 0..data.n_folds-1, tags ``segnet.cv_id``, ``segnet.fold``) run
under the scheduler of ``segnet.children``, as an ablation's do: ``--jobs N`` at once, Ctrl-C or SIGTERM
stops them all, and the parent (tag ``segnet.role=cv``) is found again by a hash of the children's
configs (or ``--resume ID``) and locked while it runs, so the same command restarts it: finished folds are
kept, an interrupted one resumes from its last epoch. For a scheduler of one's own (Slurm arrays,
Kubernetes Jobs), ``plan_lines`` (`--plan`) prints the folds' commands instead of running them, and
``summarize_run`` (`--summarize ID`) ends the cv from its parent run's id alone.

Out of fold: every child leaves its validation probabilities (``predictions/val_probs.npz``, flip TTA as
evaluated); together they cover every image of the dataset once, and the threshold is tuned on all of
them (``oof_threshold``), not per fold. ``oof/scores.csv`` scores each image at that threshold.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from segnet.children import (
    Child,
    ParentSpec,
    find_or_create_parent,
    finished_so_far,
    fold_of,
    held_parent,
    parent_run,
    train_children,
    unfinished_commands,
)
from segnet.config import Config, load_config
from segnet.errors import ConfigError, SegnetError
from segnet.metrics.segmentation import GAP_PARTS

ID_TAG = "segnet.cv_id"  # the tag that names a child's cv parent
SCORE_COLUMNS = ["id", "fold", "tgs", "iou", "coverage", "pred_coverage"]


@dataclass
class CVPlan:
    base: Config  # the config of the parent (its data.fold is no fold's in particular)
    children: list[Child]  # one per fold, in fold order
    hash: str
    profile: Path | None
    path_hash: str = ""  # the hash from the folds' path hashes (``Config.path_hash``): found by it too


def plan(config_file: str | Path | None = None, overrides=()) -> CVPlan:
    """Resolve (and so validate) every fold's config before any work."""
    overrides = [str(o) for o in overrides]
    base = load_config(config_file, overrides)
    _check_register(base)
    children = []
    for k in range(base.data.n_folds):
        over = [*overrides, f"data.fold={k}"]
        children.append(_fold_child(load_config(config_file, over), over, k))
    h, by_path = (hashlib.sha256(json.dumps(["cv", [c.cfg.hash(by_path=by_path) for c in children]]).encode())
                  .hexdigest()[:12] for by_path in (False, True))
    return CVPlan(base, children, h, Path(config_file) if config_file else None, path_hash=by_path)


def _fold_child(cfg: Config, over: list[str], k: int) -> Child:
    """Fold ``k``'s child: ``cfg`` (with data.fold=k), resolved by the profile and ``over``."""
    return Child(cfg.variant(), cfg.train.seed, cfg, over, fold=k, label=f"fold {k}")


def _parent_spec(p: CVPlan) -> ParentSpec:
    cfg = p.base
    return ParentSpec("cv", p.hash, cfg.tracking.experiment, f"cv-{cfg.variant()}", path_hash=p.path_hash,
                      tags={"segnet.variant": cfg.variant(), "segnet.decoder": cfg.model.decoder},
                      params={k: v for k, v in cfg.flat().items() if k != "data.fold"},
                      texts={"config.yaml": cfg.to_yaml()},
                      resume_hint="resume it with the same --config and overrides", who="cv")


def cv(config_file=None, overrides=(), jobs: int = 1, resume: str | None = None, backend: str = "local",
       address: str | None = None) -> tuple[str, dict]:
    """`segnet cv`: train the folds (those not finished yet; ``backend``: processes of this machine, ``jobs``
    at once, or tasks of the Ray cluster at ``address``; ``segnet.cluster``), then score them out of fold on
    the parent. Returns the parent's run id and its metrics."""
    from segnet import cluster, tracking

    p = plan(config_file, overrides)
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1; got {jobs}")
    uri = tracking.tracking_uri(p.base)
    runner = cluster.open_runner(backend, address, uri, jobs, p.children, "cv")  # Ray joined, store checked
    try:
        parent, lock = find_or_create_parent(uri, _parent_spec(p), resume)
        _announce(p, parent.run_id)

        # A restarted cv adds its time to the time the earlier invocations spent.
        t0 = time.perf_counter() - parent.info().data.metrics.get("wall_time_s", 0.0)
        try:
            with tracking.run_guard(parent):
                train_children(uri, p.base.tracking.experiment, parent.run_id, p.children, p.profile, jobs,
                               id_tag=ID_TAG, who="cv", runner=runner)
                oof = _conclude(uri, p, parent, t0)
        finally:
            lock.release()
    finally:
        runner.close()
    print(report(oof), flush=True)
    print(f"cv_run_id: {parent.run_id}  (wall time {oof.metrics['wall_time_s'] / 60:.1f} min)")
    print(f"predict with the fold ensemble: python -m segnet predict --run-id {parent.run_id} --images <dir>")
    exp_id = parent.info().info.experiment_id
    print(f"review it: make ui  (then {tracking.runs_url(uri, exp_id)})", flush=True)
    return parent.run_id, oof.metrics


def _announce(p: CVPlan, run_id: str) -> None:
    print(f"cv_run_id: {run_id}  ({len(p.children)} folds of {p.base.variant()}, hash {p.hash})", flush=True)


def plan_lines(config_file=None, overrides=(), resume: str | None = None) -> list[str]:
    """`segnet cv --plan`: the parent run, found (same hash, or ``resume``) or created as `cv` does but then
    let go (its lock released, nothing trained; it stays RUNNING until a `--summarize` ends it), and one
    self-contained shell command per fold not finished yet (``children.unfinished_commands``)."""
    from segnet import tracking

    p = plan(config_file, overrides)
    uri = tracking.tracking_uri(p.base)
    parent, lock = find_or_create_parent(uri, _parent_spec(p), resume)
    lock.release()
    _announce(p, parent.run_id)
    return unfinished_commands(uri, p.base.tracking.experiment, parent.run_id, p.children, p.profile, ID_TAG, "cv")


def summarize_run(run_id: str, overrides=()) -> dict:
    """`segnet cv --summarize ID`: the end of `segnet cv` (``_conclude``: out-of-fold scores, metrics, the
    fold ensemble) from folds that ran anywhere, the parent then ended FINISHED. The out-of-fold score
    needs every fold: with some missing it names them in one line and changes nothing. ``overrides``
    apply to the parent's config (``tracking.uri=``: the store; ``data.dir=``: the dataset on this machine)."""
    from segnet.runs import run_config, store_uri

    uri = store_uri(overrides)
    info = parent_run(uri, run_id, "cv")
    cfg = run_config(run_id, overrides)[2]
    _check_register(cfg)
    folds = [_fold_child(cfg.replace([f"data.fold={k}"]), [f"data.fold={k}"], k) for k in range(cfg.data.n_folds)]
    p = CVPlan(cfg, folds, info.data.tags.get("segnet.cv_hash", ""), None)
    missing, span = finished_so_far(uri, info, cfg.tracking.experiment, {c.key: c.label for c in folds}, ID_TAG)
    if missing:
        raise SegnetError(f"cv run '{run_id}': {len(missing)} of {len(folds)} folds not finished yet "
                          f"({', '.join(missing)}); the out-of-fold score needs every fold")
    with held_parent(uri, run_id, "cv") as parent:
        oof = _conclude(uri, p, parent, time.perf_counter() - span)
        parent.end("FINISHED")
    print(report(oof), flush=True)
    print(f"cv_run_id: {run_id}  ({len(folds)} of {len(folds)} folds finished; parent FINISHED)", flush=True)
    return oof.metrics


def _conclude(uri: str, p: CVPlan, parent, t0: float) -> OutOfFold:
    """The end of a cv, `cv`'s and `--summarize`'s: the folds scored out of fold (``out_of_fold``), logged to
    the parent with the wall time since ``t0`` (a ``time.perf_counter()`` value), and the fold ensemble as
    its model."""
    oof = out_of_fold(uri, p, parent.run_id)
    oof.metrics["wall_time_s"] = time.perf_counter() - t0
    _log(parent, oof)
    if p.base.tracking.log_model:
        _log_ensemble(uri, parent, oof, p.base)
    if p.base.tracking.register:
        _register_ensemble(parent, p.base.tracking.register)
    return oof


def _check_register(cfg: Config) -> None:
    """``tracking.register`` needs the fold ensemble logged as the parent's model: checked before any work."""
    if cfg.tracking.register and not cfg.tracking.log_model:
        raise ConfigError(f"tracking.register={cfg.tracking.register} needs tracking.log_model=true "
                          "(nothing to register)")


def _register_ensemble(parent, name: str):
    """``tracking.register``: the parent's fold ensemble as a version of ``name`` with alias champion, tagged
    (``tracking.registry_tags``) with the variant, the out-of-fold scores and the data fingerprint; the parent
    is tagged with it. Registering the same cv again (a restart) keeps its version."""
    from segnet import runs, tracking

    mv = runs.register(parent.run_id, name, tracking.DEFAULT_ALIAS, uri=parent.uri)
    parent.set_tags({"segnet.registered_model": f"{name}/{mv.version}", "segnet.registered_run_id": parent.run_id})
    return mv


@dataclass
class OutOfFold:
    scores: pd.DataFrame  # SCORE_COLUMNS, one row per image of the dataset, in the dataset's order
    folds: pd.DataFrame  # per fold: its run, images and final scores
    metrics: dict
    data: object  # the dataset (segnet.data.LoadedData)


def _fold_runs(uri: str, p: CVPlan, parent_id: str) -> dict[int, object]:
    """fold -> its finished child run (the latest, should a fold have finished twice)."""
    from segnet import tracking

    runs = tracking.find_runs(uri, p.base.tracking.experiment, f"tags.`{ID_TAG}` = '{parent_id}'",
                              max_results=1000)
    by_fold: dict[int, object] = {}
    for r in runs:  # newest first
        if r.info.status == "FINISHED" and "best_val_tgs_map" in r.data.metrics:
            by_fold.setdefault(fold_of(r), r)
    missing = [c.fold for c in p.children if c.fold not in by_fold]
    if missing:
        raise SegnetError(f"cv run '{parent_id}' has no finished run of fold(s) {missing}")
    return {c.fold: by_fold[c.fold] for c in p.children}


def out_of_fold(uri: str, p: CVPlan, parent_id: str) -> OutOfFold:
    """Every image scored by the model that did not train on it, at the threshold tuned on all of them."""
    from segnet import tracking
    from segnet.data import load_dataset
    from segnet.evaluate import read_probabilities
    from segnet.metrics.segmentation import score_gaps, score_table, search_threshold

    runs = _fold_runs(uri, p, parent_id)
    data = load_dataset(p.base)
    ids, probs, fold_col, rows = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for k, r in runs.items():
            path = tracking.download_artifact(uri, r.info.run_id, "predictions/val_probs.npz", Path(tmp) / str(k))
            fold_ids, fold_probs = read_probabilities(path)
            path.unlink()
            ids += fold_ids
            probs.append(fold_probs)
            fold_col += [k] * len(fold_ids)
            m = r.data.metrics
            rows.append({"fold": k, "run_id": r.info.run_id, "images": len(fold_ids),
                         "val_tgs_map_tuned": m.get("val_tgs_map_tuned"), "best_val_tgs_map": m.get("best_val_tgs_map"),
                         "best_threshold": m.get("best_threshold")})
    index = {i: n for n, i in enumerate(data.ids)}
    if len(set(ids)) != len(ids) or set(ids) != set(index):
        raise SegnetError(f"the folds' validation images do not cover {data.dir} ({len(index)} images) exactly "
                          f"once ({len(ids)} scored, {len(set(ids))} distinct, "
                          f"{len(set(index) - set(ids))} missing): were the fold runs trained on other data?")
    order = np.argsort([index[i] for i in ids], kind="stable")  # the dataset's order
    ids = [ids[i] for i in order]
    probs = np.concatenate(probs)[order]
    truth = data.masks[[index[i] for i in ids]][..., 0] > 0.5
    threshold = search_threshold(truth, probs)[0] if p.base.eval.threshold_search else 0.5
    scores = score_table(ids, truth, probs > threshold)
    scores["fold"] = np.asarray(fold_col)[order]
    folds = pd.DataFrame(rows)
    final = folds["val_tgs_map_tuned"].astype(float)
    metrics = {"oof_tgs_map": float(scores["tgs"].mean()), "oof_iou": float(scores["iou"].mean()),
               "oof_threshold": float(threshold), "fold_tgs_map_mean": float(final.mean()),
               "fold_tgs_map_std": float(final.std(ddof=1)) if len(final) > 1 else 0.0,
               "n_folds": float(len(folds)), "oof_images": float(len(scores)),
               **{f"oof_{k}": v for k, v in score_gaps(scores).items()}}
    return OutOfFold(scores[SCORE_COLUMNS], folds, metrics, data)


def _log(parent, oof: OutOfFold) -> None:
    from segnet import plots, tracking

    tracking.log_children_inputs(parent, oof.folds["run_id"], "cross-validation")
    parent.log_dataframe(oof.scores, "oof/scores.csv")
    parent.log_dataframe(oof.folds, "oof/folds.csv")
    parent.log_metrics(oof.metrics)
    parent.log_figure(plots.plot_score_gaps(oof.scores, title="Where the out-of-fold score is lost"),
                      "plots/oof_score_gaps.png")
    parent.set_tags({"segnet.cv_folds": ",".join(oof.folds["run_id"]), "segnet.dataset": oof.data.kind,
                     "segnet.data_fingerprint": oof.data.fingerprint})


def _log_ensemble(uri: str, parent, oof: OutOfFold, cfg) -> None:
    """The fold ensemble as the parent's logged pyfunc model (mean of the fold models' logits at the
    out-of-fold threshold), so `segnet register`, `mlflow.pyfunc` and `mlflow models serve` take a cv run
    like any other. The fold models come from the local checkpoints, else from the fold runs' models; a
    fold that is a snapshot ensemble (sgdr cycles) brings each of its snapshots (as many in every fold)."""
    from segnet import tracking
    from segnet.runs import local_model_files

    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for fold, run_id in zip(oof.folds["fold"], oof.folds["run_id"], strict=True):
            local = local_model_files(run_id, cfg)
            if not all(f.exists() for f in local):
                dst = Path(tmp) / f"fold{fold}"
                dst.mkdir()
                local = tracking.download_logged_keras(uri, run_id, dst)
            files += local
        parent.log_model(files, cfg, oof.metrics["oof_threshold"])


def report(oof: OutOfFold) -> str:
    m = oof.metrics
    lines = [f"cv: fold {r.fold}: final tgs_map {r.val_tgs_map_tuned:.4f} (its threshold {r.best_threshold:.2f}, "
             f"{r.images} images, run {r.run_id})" for r in oof.folds.itertuples()]
    lines.append(f"cv: folds {m['fold_tgs_map_mean']:.4f} ± {m['fold_tgs_map_std']:.4f} (mean ± std of the final "
                 f"scores); out of fold: tgs_map {m['oof_tgs_map']:.4f}, iou {m['oof_iou']:.4f} at threshold "
                 f"{m['oof_threshold']:.2f} over {int(m['oof_images'])} images")
    lines.append("cv: out-of-fold score lost to " + ", ".join(
        f"{label} {m[f'oof_{k}']:.4f}" for k, label in GAP_PARTS.items()))
    return "\n".join(lines)

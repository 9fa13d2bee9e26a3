"""Training: ``train(cfg)`` fits one U-Net, tracks everything in MLflow and returns the results.

Per epoch: the exact ``val_iou`` / ``val_tgs_map`` on the whole validation fold (numpy, predictions
mapped back to 101x101), a checkpoint of the best model by ``val_tgs_map``, and a resume state written
atomically before the epoch's metrics go to MLflow in one batch: a run killed at any point resumes from
its last finished epoch with no epoch missing or logged twice.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segnet import paths
from segnet.config import Config
from segnet.errors import SegnetError

EPOCH_METRICS = ("loss", "val_loss", "val_iou", "val_tgs_map", "lr", "epoch_time_s", "train_images_per_s")


@dataclass
class TrainResult:
    run_id: str
    metrics: dict[str, float]
    history: dict[str, list] = field(default_factory=dict)
    experiment_id: str = ""


def log(msg: str) -> None:
    print(msg, flush=True)


# -- runtime ---------------------------------------------------------------------------------------
def setup_runtime(cfg: Config):
    """Threads, seeds, precision and distribution strategy; returns the strategy."""
    import keras
    import tensorflow as tf

    if cfg.train.threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(cfg.train.threads)
        except RuntimeError:  # already initialised in this process: keep what is there
            pass
    random.seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    keras.utils.set_random_seed(cfg.train.seed)
    gpus = tf.config.list_logical_devices("GPU")
    if cfg.train.precision == "mixed_float16" and not gpus:
        log("note: train.precision=mixed_float16 on a CPU is slow and not recommended; using it as asked")
    keras.mixed_precision.set_global_policy(cfg.train.precision)
    return make_strategy(cfg.train.strategy)


def make_strategy(name: str):
    import tensorflow as tf

    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    if name == "auto":
        return tf.distribute.MirroredStrategy(gpus) if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0] if gpus else cpus[0])
    return tf.distribute.MirroredStrategy(gpus if gpus else cpus)


# -- schedule --------------------------------------------------------------------------------------
def cosine_lr(cfg: Config, epoch: int) -> float:
    t = cfg.train
    return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1 + math.cos(math.pi * epoch / max(1, t.epochs)))


# -- state on disk ---------------------------------------------------------------------------------
def _atomic_save_model(model, path: Path) -> None:
    tmp = path.with_name(path.stem + ".tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


def _atomic_write_json(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def run_dir(run_id: str) -> Path:
    return paths.RUNS_DIR / run_id


def find_resumable(cfg: Config, uri: str) -> str | None:
    """The latest unfinished run of this exact config that left a resume state behind."""
    from segnet import tracking

    runs = tracking.find_runs(uri, cfg.tracking.experiment, f"tags.`segnet.config_hash` = '{cfg.hash()}'")
    for r in runs:
        if r.info.status != "FINISHED" and (run_dir(r.info.run_id) / "state.json").exists():
            return r.info.run_id
    return None


# -- validation ------------------------------------------------------------------------------------
def predict_logits(model, images_net: np.ndarray, batch_size: int, tta: bool = False) -> np.ndarray:
    """Logits at network resolution; with ``tta`` the mean of the plain and the flipped prediction."""
    z = model.predict(images_net, batch_size=batch_size, verbose=0).astype(np.float32)
    if tta:
        zf = model.predict(images_net[:, :, ::-1], batch_size=batch_size, verbose=0).astype(np.float32)
        z = 0.5 * (z + zf[:, :, ::-1])
    return z


def validation_scores(cfg, model, val_images_net, val_masks, loss_fn):
    """Exact per-epoch validation metrics on the whole fold, at 101x101."""
    import tensorflow as tf

    from segnet.data.pipeline import from_network, to_network
    from segnet.metrics.segmentation import iou, tgs_map

    logits = predict_logits(model, val_images_net, cfg.train.batch_size)
    masks_net = to_network(val_masks, cfg.data.size, cfg.data.resize_mode, is_mask=True)
    losses = [
        float(tf.reduce_mean(loss_fn(tf.constant(masks_net[i : i + 256]), tf.constant(logits[i : i + 256]))))
        * len(logits[i : i + 256])
        for i in range(0, len(logits), 256)
    ]
    pred = from_network(logits, cfg.data.resize_mode) > 0.0
    truth = val_masks > 0.5
    return {"val_loss": sum(losses) / len(logits), "val_iou": iou(truth, pred), "val_tgs_map": tgs_map(truth, pred)}


# -- training --------------------------------------------------------------------------------------
def train(cfg: Config, *, parent_run_id: str | None = None, extra_tags: dict | None = None) -> TrainResult:
    """Train one model as configured; returns the MLflow run id and the final metrics."""
    import keras

    from segnet import evaluate, tracking
    from segnet.data import load_dataset
    from segnet.data.folds import split
    from segnet.data.pipeline import make_dataset, to_network
    from segnet.losses import get_loss
    from segnet.models import build_model, count_params
    from segnet.models.decoders import resolve_decoder

    strategy = setup_runtime(cfg)
    spec, _ = resolve_decoder(cfg.model.decoder, cfg.decoder)
    data = load_dataset(cfg)
    images, masks, ids = data.images, data.masks, data.ids
    train_idx, val_idx = split(data, cfg)
    log(f"data: {data.dir} ({data.kind}, {len(ids)} images: {len(train_idx)} train, {len(val_idx)} validation "
        f"in fold {cfg.data.fold}/{cfg.data.n_folds}) [{data.reason}]")

    uri = tracking.tracking_uri(cfg)
    run_id = find_resumable(cfg, uri) if cfg.train.resume else None
    if cfg.train.resume and run_id is None:
        log("resume: no interrupted run of this config was found; starting a new run")
    state = None
    if run_id:
        run = tracking.reopen_run(uri, run_id)
        state = json.loads((run_dir(run_id) / "state.json").read_text())
        log(f"resume: run {run_id} from epoch {state['epoch'] + 1} of {cfg.train.epochs}")
    else:
        tags = {
            "segnet.decoder": cfg.model.decoder,
            "segnet.variant": cfg.variant(),
            "segnet.dataset": data.kind,
            "segnet.data_fingerprint": data.fingerprint,
            "segnet.config_hash": cfg.hash(),
            **(extra_tags or {}),
        }
        name = cfg.tracking.run_name or f"{cfg.variant()}-{time.strftime('%m%d-%H%M%S')}"
        run = tracking.create_run(uri, cfg.tracking.experiment, name, tags, parent_run_id=parent_run_id)
        run_id = run.run_id
    rdir = run_dir(run_id)
    rdir.mkdir(parents=True, exist_ok=True)

    with tracking.run_guard(run):
        if state is None:
            run.log_params(cfg.flat())
            run.log_text(cfg.to_yaml(), "config.yaml")

        loss_name = cfg.train.loss
        with strategy.scope():
            if state is not None:
                model = keras.models.load_model(rdir / "last.keras")
            else:
                model = build_model(cfg)
                model.compile(optimizer=keras.optimizers.Adam(cfg.train.lr), loss=get_loss(loss_name))

        if state is None:
            const_init = evaluate.const_response(model, spec)
            state = {
                "epoch": -1, "history": {k: [] for k in EPOCH_METRICS}, "best": -1.0, "best_epoch": -1,
                "wait": 0, "lr": cfg.train.lr, "const_init": const_init, "train_time_s": 0.0,
            }
            run.log_metrics({"params_count": count_params(model), "artifact_const_response_init": const_init})
        else:
            _relog_missing_epochs(run, state)

        train_ds = make_dataset(images[train_idx], masks[train_idx], cfg, training=True)
        val_images_net = to_network(images[val_idx], cfg.data.size, cfg.data.resize_mode)
        n_train = len(train_idx)
        fit_verbose = 1 if sys.stdout.isatty() else 0
        lovasz_from = cfg.train.epochs - cfg.train.lovasz_epochs if cfg.train.lovasz_epochs else cfg.train.epochs

        for epoch in range(state["epoch"] + 1, cfg.train.epochs):
            want_loss = "lovasz_hinge" if epoch >= lovasz_from else loss_name
            if model.loss is not get_loss(want_loss):
                log(f"epoch {epoch + 1}: fine-tuning with {want_loss}")
                with strategy.scope():
                    model.compile(optimizer=model.optimizer, loss=get_loss(want_loss))
            lr = cosine_lr(cfg, epoch) if cfg.train.schedule == "cosine" else state["lr"]
            model.optimizer.learning_rate.assign(lr)

            t0 = time.perf_counter()
            if fit_verbose:
                log(f"epoch {epoch + 1}/{cfg.train.epochs}")
            hist = model.fit(train_ds, epochs=1, verbose=fit_verbose, shuffle=False)  # the pipeline shuffles
            t_train = time.perf_counter() - t0
            scores = validation_scores(cfg, model, val_images_net, masks[val_idx], get_loss(want_loss))
            epoch_time = time.perf_counter() - t0
            metrics = {
                "loss": float(hist.history["loss"][-1]), **scores, "lr": lr,
                "epoch_time_s": epoch_time, "train_images_per_s": n_train / t_train,
            }

            improved = metrics["val_tgs_map"] > state["best"]
            if improved:
                state.update(best=metrics["val_tgs_map"], best_epoch=epoch, wait=0)
                _atomic_save_model(model, rdir / "best.keras")
            else:
                state["wait"] += 1
                if cfg.train.schedule == "plateau" and state["wait"] % 3 == 0:
                    state["lr"] = max(cfg.train.min_lr, state["lr"] * 0.5)
            state["epoch"] = epoch
            state["train_time_s"] += epoch_time
            for k in EPOCH_METRICS:
                state["history"][k].append(metrics[k])
            _atomic_save_model(model, rdir / "last.keras")
            _atomic_write_json(state, rdir / "state.json")
            run.log_metrics(metrics, step=epoch)
            log(f"epoch {epoch + 1:>3}/{cfg.train.epochs}  loss {metrics['loss']:.4f}  val_loss {metrics['val_loss']:.4f}  "
                f"val_iou {metrics['val_iou']:.4f}  val_tgs_map {metrics['val_tgs_map']:.4f}{' *' if improved else '  '}  "
                f"lr {lr:.2e}  {epoch_time:.1f}s  {metrics['train_images_per_s']:.0f} img/s")
            if cfg.train.early_stopping and state["wait"] >= cfg.train.early_stopping and epoch < lovasz_from:
                log(f"early stopping: no better val_tgs_map for {state['wait']} epochs")
                break

        log("final evaluation of the best checkpoint (threshold search, artifact metrics, plots)")
        best = keras.models.load_model(rdir / "best.keras")
        final = evaluate.evaluate_and_log(
            run, best, cfg, spec, images[val_idx], masks[val_idx], [ids[i] for i in val_idx], prefix="",
        )
        final.update(
            best_val_tgs_map=state["best"],
            best_val_iou=state["history"]["val_iou"][state["best_epoch"]],
            best_epoch=state["best_epoch"] + 1,
            train_time_s=state["train_time_s"],
            params_count=count_params(best),
        )
        run.log_metrics(final)
        from segnet import plots

        run.log_figure(plots.plot_learning_curves(state["history"]), "plots/learning_curves.png")
        if cfg.tracking.log_model:
            run.log_keras_model(best, val_images_net[:2])

    shutil.rmtree(rdir / "last.keras", ignore_errors=True)
    exp_id = run.info().info.experiment_id
    log(f"run_id: {run_id}")
    log(f"best_val_tgs_map {final['best_val_tgs_map']:.4f} (epoch {final['best_epoch']})  "
        f"best_val_iou {final['best_val_iou']:.4f}  best_threshold {final['best_threshold']:.2f}  "
        f"val_tgs_map_tuned {final['val_tgs_map_tuned']:.4f}  train_time_s {final['train_time_s']:.0f}")
    log(f"look at it: make ui  (then {tracking.runs_url(uri, exp_id)})")
    return TrainResult(run_id=run_id, metrics=final, history=state["history"], experiment_id=exp_id)


def _relog_missing_epochs(run, state) -> None:
    """A kill between the state write and the metric batch leaves epochs on disk but not in MLflow."""
    logged = {m.step for m in run.metric_history("val_tgs_map")}
    for epoch in range(state["epoch"] + 1):
        if epoch not in logged:
            run.log_metrics({k: state["history"][k][epoch] for k in EPOCH_METRICS}, step=epoch)


def check_can_train(cfg: Config) -> None:
    if cfg.train.precision == "mixed_float16" and cfg.train.strategy == "mirrored":
        pass
    if cfg.data.limit and cfg.data.limit < cfg.data.n_folds * 2:
        raise SegnetError(f"data.limit={cfg.data.limit} is too small for {cfg.data.n_folds} folds")

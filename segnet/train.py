"""Training: ``train(cfg)`` fits one U-Net, tracks everything in MLflow and returns the results.

Per epoch: the exact ``val_iou`` / ``val_tgs_map`` on the whole validation fold (numpy, predictions
mapped back to 101x101), a checkpoint of the best model by ``val_tgs_map`` (with ``train.schedule: sgdr``
and ``train.cycles`` > 1 also of each cycle's best: a snapshot ensemble), and a resume state written
atomically before the epoch's metrics go to MLflow in one batch: a run killed at any point resumes from
its last finished epoch with no epoch missing or logged twice.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segnet import atomic, evaluate, locks, multiworker, paths
from segnet.atomic import atomic_write, atomic_write_text
from segnet.config import Config
from segnet.data import load_dataset
from segnet.data.folds import split
from segnet.data.pipeline import from_network, make_dataset, to_network
from segnet.errors import SegnetError
from segnet.inference import predict_logits
from segnet.losses import get_loss
from segnet.metrics.segmentation import iou, tgs_map
from segnet.models.decoders import resolve_decoder
from segnet.models.encoders import fetch_weights

# TensorFlow and Keras (and segnet.models' builders, segnet.models.heads), MLflow (segnet.tracking,
# segnet.runs) and matplotlib (segnet.plots) are imported inside the functions that use them, so that the
# data, the folds, the store and the runs folder are checked in seconds: docs/architecture.md, "Why
# TensorFlow is imported late".

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
    """Threads, seeds, precision and distribution strategy; returns the strategy. A multi-worker strategy
    is made first: it configures TensorFlow's runtime, which the first device listing starts."""
    import keras
    import tensorflow as tf

    if cfg.train.threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(cfg.train.threads)
        except RuntimeError:  # already initialised in this process: keep what is there
            pass
    strategy = multiworker.make_strategy() if cfg.train.strategy == "multi_worker" else None
    random.seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    keras.utils.set_random_seed(cfg.train.seed)
    gpus = tf.config.list_logical_devices("GPU")
    if cfg.train.precision == "mixed_float16" and not gpus:
        log("note: train.precision=mixed_float16 on a CPU is slow and not recommended; using it as asked")
    keras.mixed_precision.set_global_policy(cfg.train.precision)
    return strategy if strategy is not None else make_strategy(cfg.train.strategy)


def make_strategy(name: str):
    import tensorflow as tf

    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    if name == "auto":
        return tf.distribute.MirroredStrategy(gpus) if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0] if gpus else cpus[0])
    return tf.distribute.MirroredStrategy(gpus if gpus else cpus)


# -- state on disk ---------------------------------------------------------------------------------
@dataclass
class TrainState:
    """Everything a resumed run needs besides the checkpoint files, written atomically each epoch.

    ``checkpoint``, ``best_checkpoint`` and ``snapshots`` name the files of this very state
    (``last_e0003.keras``, ``snapshot_c1_e0007.keras``): a kill between writing a checkpoint and writing
    the state leaves the previous, consistent pair.
    """

    lr: float
    const_init: float
    epoch: int = -1  # the last finished epoch (0-based); -1: none yet
    history: dict[str, list] = field(default_factory=lambda: {k: [] for k in EPOCH_METRICS})
    best: float = -1.0
    best_epoch: int = -1
    wait: int = 0
    train_time_s: float = 0.0
    checkpoint: str = ""
    best_checkpoint: str = ""
    # A snapshot ensemble (sgdr, cycles > 1), per cycle begun: its best checkpoint's file, val_tgs_map, epoch.
    snapshots: list[str] = field(default_factory=list)
    snapshot_best: list[float] = field(default_factory=list)
    snapshot_epoch: list[int] = field(default_factory=list)

    def save(self, rdir: Path) -> None:
        atomic_write_text(rdir / "state.json", json.dumps(dataclasses.asdict(self), indent=1))

    @classmethod
    def load(cls, rdir: Path) -> TrainState:
        return cls(**json.loads((rdir / "state.json").read_text()))


def run_dir(run_id: str) -> Path:
    return paths.RUNS_DIR / run_id


def _check_runs_dir() -> None:
    """The local scratch folder must be writable before an MLflow run is opened for it."""
    why = atomic.unwritable(paths.RUNS_DIR)
    if why:
        raise SegnetError(f"runs folder {paths.RUNS_DIR} is not writable ({why}); "
                          "set SEGNET_RUNS_DIR to a writable folder")


def _config_runs(cfg: Config, uri: str) -> list:
    from segnet import tracking

    filters = [f"tags.`segnet.config_hash` = '{h}'" for h in cfg.hashes()]
    filters.append(f"tags.`segnet.config_path_hash` = '{cfg.path_hash()}'")  # made where the data was
    runs = {r.info.run_id: r for f in filters for r in tracking.find_runs(uri, cfg.tracking.experiment, f,
                                                                          max_results=1000)}
    return sorted(runs.values(), key=lambda r: r.info.start_time, reverse=True)  # newest first, as find_runs


def find_resumable(cfg: Config, uri: str, parent_run_id: str | None = None) -> tuple[str, locks.RunLock] | None:
    """The latest unfinished run of this exact config under the same parent (none for a plain
    training) that left a resume state, locked for us. A CV fold never takes over a plain training of
    the same fold, nor the reverse.

    A run whose owner is alive is never taken over: a one-line error says who holds it.
    """
    for r in _config_runs(cfg, uri):
        rdir = run_dir(r.info.run_id)
        same_parent = r.data.tags.get("mlflow.parentRunId") == parent_run_id
        if same_parent and r.info.status != "FINISHED" and (rdir / "state.json").exists():
            return r.info.run_id, locks.lock_run(rdir, f"run {r.info.run_id} of this config")
    return None


def _end_dead_runs(cfg: Config, uri: str, own_id: str) -> None:
    """Runs of this config still marked RUNNING whose owner died (SIGKILL, power loss) end KILLED,
    so the UI does not show them as training; they stay resumable."""
    from segnet import tracking

    for r in _config_runs(cfg, uri):
        rdir = run_dir(r.info.run_id)
        if r.info.run_id != own_id and r.info.status == "RUNNING" and (rdir / locks.LOCK_NAME).exists() \
                and not locks.is_alive(rdir):
            tracking.Run(uri, r.info.run_id).end("KILLED")
            log(f"note: run {r.info.run_id} of this config was left RUNNING by a process that died; marked KILLED")


def open_run(cfg: Config, uri: str, data, parent_run_id: str | None, extra_tags: dict | None):
    """Stage 1: resume the interrupted run of this config (``train.resume``) or create a new one.

    Returns the run, its resume state (None for a new run) and the run's lock, held until training ends.
    """
    from segnet import tracking

    _check_runs_dir()
    found = find_resumable(cfg, uri, parent_run_id) if cfg.train.resume else None
    if cfg.train.resume and found is None:
        log("resume: no interrupted run of this config was found; starting a new run")
    if found:
        run_id, lock = found
        run = tracking.reopen_run(uri, run_id)
        state = TrainState.load(run_dir(run_id))
        log(f"resume: run {run_id} from epoch {state.epoch + 2} of {cfg.train.epochs}")
    else:
        tags = {
            "segnet.decoder": cfg.model.decoder,
            "segnet.variant": cfg.variant(),
            "segnet.dataset": data.kind,
            "segnet.data_fingerprint": data.fingerprint,
            "segnet.config_hash": cfg.hash(),
            "segnet.config_path_hash": cfg.path_hash(),
            **(extra_tags or {}),
        }
        name = cfg.tracking.run_name or f"{cfg.variant()}-{time.strftime('%m%d-%H%M%S')}"
        run = tracking.create_run(uri, cfg.tracking.experiment, name, tags, parent_run_id=parent_run_id)
        state = None
        try:
            lock = locks.try_lock(run_dir(run.run_id))  # a new id: nobody else can hold it
        except BaseException as e:
            tracking.end_after(run, e)
            raise
    return run, state, lock


# -- schedule --------------------------------------------------------------------------------------
def learning_rate(cfg: Config, epoch: int, state: TrainState) -> float:
    """The epoch's learning rate: cosine from lr to min_lr, sgdr (cosine restarts: lr at each cycle's first
    epoch, min_lr at its last; a one-epoch cycle is all restart), plateau halving (kept in the state), or constant."""
    t = cfg.train
    if t.schedule == "cosine":
        return _cosine(t.lr, t.min_lr, epoch / max(1, t.epochs))
    if t.schedule == "sgdr":
        bounds = [*cycle_starts(t.epochs, t.cycles), t.epochs]
        k = cycle_of(cfg, epoch)
        return _cosine(t.lr, t.min_lr, (epoch - bounds[k]) / max(1, bounds[k + 1] - bounds[k] - 1))
    return state.lr


def _cosine(lr: float, min_lr: float, t: float) -> float:
    """Cosine annealing from ``lr`` (t = 0) to ``min_lr`` (t = 1)."""
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * t))


def cycle_starts(epochs: int, cycles: int) -> list[int]:
    """The first epoch (0-based) of each sgdr cycle: cycle k starts at floor(k * epochs / cycles), so cycles
    differ by one epoch at most and the longer ones come last (10 epochs in 3 cycles: 3, 3 and 4)."""
    return [k * epochs // cycles for k in range(cycles)]


def cycle_of(cfg: Config, epoch: int) -> int:
    """The sgdr cycle (0-based) of ``epoch``; 0 for every epoch of the other schedules (one cycle)."""
    return bisect.bisect_right(cycle_starts(cfg.train.epochs, cfg.train.cycles), epoch) - 1


# -- validation ------------------------------------------------------------------------------------
def validation_scores(cfg, model, val_images_net, val_masks, loss_fn):
    """Exact per-epoch validation metrics on the whole fold, at 101x101."""
    import tensorflow as tf

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
@dataclass
class _Fit:
    """What every epoch of one training needs: config, model, data, run and where it keeps state.
    ``run`` is None on a worker of a multi-worker training that is not the chief: it keeps no state."""

    cfg: Config
    run: object
    rdir: Path
    model: object
    strategy: object
    images: np.ndarray
    masks: np.ndarray
    train_idx: np.ndarray
    val_images_net: np.ndarray
    val_masks: np.ndarray


def train(cfg: Config, *, parent_run_id: str | None = None, extra_tags: dict | None = None) -> TrainResult:
    """Train one model as configured; returns the MLflow run id and the final metrics.

    Stages: open or resume the run (``open_run``), build or restore the model (``_build_or_restore``),
    the epochs (``_run_epoch``), the final evaluation and logging (``_finish``). With ``train.strategy:
    multi_worker`` on a worker that is not the chief: :func:`_follow_chief` (no metrics returned).
    """
    role = multiworker.role() if cfg.train.strategy == "multi_worker" else None  # TF_CONFIG, before any work
    with multiworker.cluster_errors(role):
        return _train(cfg, role, parent_run_id, extra_tags)


def _train(cfg: Config, role, parent_run_id: str | None, extra_tags: dict | None) -> TrainResult:
    """:func:`train` on one worker (``role``: its task in a multi-worker training, else None)."""
    from segnet import tracking

    # What a user can get wrong is checked before TensorFlow is set up: the data, the store, the runs folder
    # (the last two only where they are used: the other workers of a multi-worker training log nothing).
    data = load_dataset(cfg)
    images, masks, ids = data.images, data.masks, data.ids
    train_idx, val_idx = split(ids, masks, n_folds=cfg.data.n_folds, fold=cfg.data.fold,
                               seed=cfg.data.fold_seed)
    log(f"data: {data.dir} ({data.kind}, {len(ids)} images: {len(train_idx)} train, {len(val_idx)} validation "
        f"in fold {cfg.data.fold}/{cfg.data.n_folds}) [{data.reason}]")
    if role is not None:
        log(f"multi-worker: task {role.task} of {role.workers}; the chief, {role.chief_task}, logs the run")
    uri = tracking.tracking_uri(cfg)
    if role is None or role.chief:
        tracking.client(uri)
        _check_runs_dir()

    strategy = setup_runtime(cfg)
    spec, _ = resolve_decoder(cfg.model.decoder, cfg.decoder)
    # Pretrained encoder weights are read (or downloaded) before the run exists, so a failure leaves none;
    # a resumed run restores its checkpoint instead (one that finds nothing to resume fetches them later).
    encoder_init = None if cfg.train.resume else encoder_weights(cfg)
    if role is not None and not role.chief:
        return _follow_chief(cfg, strategy, spec, encoder_init, data, train_idx, val_idx)
    run, state, lock = open_run(cfg, uri, data, parent_run_id, extra_tags)
    rdir = run_dir(run.run_id)
    try:
        with tracking.run_guard(run), tracking.system_metrics(run, cfg.tracking.system_metrics):
            if role is not None:
                multiworker.share_run(strategy, run.run_id, resumed=state is not None)
            _end_dead_runs(cfg, uri, run.run_id)
            tracking.log_training_inputs(run, data, cfg, train_idx, val_idx)  # again on resume: kept once
            model, state = _build_or_restore(cfg, run, rdir, spec, strategy, state, encoder_init)
            fit = _Fit(cfg, run, rdir, model, strategy, images, masks, train_idx,
                       to_network(images[val_idx], cfg.data.size, cfg.data.resize_mode), masks[val_idx])
            _log_cycles(cfg)
            _epochs(fit, state)
            final = _finish(fit, state, spec, images[val_idx], masks[val_idx], [ids[i] for i in val_idx])
    finally:
        lock.release()
    for stale in rdir.glob("last_e*.keras"):
        stale.unlink(missing_ok=True)
    if role is not None:
        multiworker.barrier(strategy)  # the other workers have waited for the final evaluation
    exp_id = run.info().info.experiment_id
    log(f"run_id: {run.run_id}")
    log(f"best_val_tgs_map {final['best_val_tgs_map']:.4f} (epoch {final['best_epoch']})  "
        f"best_val_iou {final['best_val_iou']:.4f}  best_threshold {final['best_threshold']:.2f}  "
        f"val_tgs_map_tuned {final['val_tgs_map_tuned']:.4f}  train_time_s {final['train_time_s']:.0f}")
    log(f"look at it: make ui  (then {tracking.runs_url(uri, exp_id)})")
    return TrainResult(run_id=run.run_id, metrics=final, history=state.history, experiment_id=exp_id)


def _follow_chief(cfg: Config, strategy, spec, encoder_init, data, train_idx, val_idx) -> TrainResult:
    """A multi-worker training on a worker that is not the chief: the chief's run (new, or resumed from the
    checkpoint its resume state names), trained beside the chief epoch by epoch with the same decisions; it
    logs nothing and writes no file. Returns when the chief has finished the run."""
    run_id, resumed = multiworker.share_run(strategy)
    rdir = run_dir(run_id)
    state = _chief_state(rdir) if resumed else None
    model, state = _build_or_restore(cfg, None, rdir, spec, strategy, state, encoder_init)
    val_images_net = to_network(data.images[val_idx], cfg.data.size, cfg.data.resize_mode)
    _epochs(_Fit(cfg, None, rdir, model, strategy, data.images, data.masks, train_idx, val_images_net,
                 data.masks[val_idx]), state)
    multiworker.barrier(strategy)  # until the chief has evaluated and logged the run
    log(f"run_id: {run_id}")
    return TrainResult(run_id=run_id, metrics={}, history=state.history)


def _chief_state(rdir: Path) -> TrainState:
    """The resume state the chief resumes from, read from its run folder, which this worker must see."""
    try:
        return TrainState.load(rdir)
    except OSError:
        raise SegnetError(f"resume: this worker cannot read the chief's resume state {rdir / 'state.json'}; "
                          "every worker needs the chief's runs folder (SEGNET_RUNS_DIR on a shared file "
                          "system)") from None


def _epochs(fit: _Fit, state: TrainState) -> None:
    """Stage 3 for every epoch left, until the last or an early stop."""
    for epoch in range(state.epoch + 1, fit.cfg.train.epochs):
        if _run_epoch(fit, state, epoch):
            return


def _lovasz_from(cfg: Config) -> int:
    return cfg.train.epochs - cfg.train.lovasz_epochs if cfg.train.lovasz_epochs else cfg.train.epochs


def _log_cycles(cfg: Config) -> None:
    """What sgdr will do: its cycles, the snapshots kept, and that early stopping is off."""
    t = cfg.train
    if t.schedule != "sgdr":
        return
    bounds = [*cycle_starts(t.epochs, t.cycles), t.epochs]
    spans = ", ".join(f"{a + 1}-{b}" for a, b in zip(bounds[:-1], bounds[1:], strict=True))
    kept = "; the best checkpoint of each is kept, the model is their ensemble" if t.cycles > 1 else ""
    log(f"sgdr: {t.cycles} cycle(s) of epochs {spans}, lr {t.lr:g} -> {t.min_lr:g} in each{kept}")
    if t.early_stopping:
        log("note: train.early_stopping does not apply with train.schedule=sgdr: every cycle runs to its end")


def compile_model(model, optimizer, loss_name: str, salt_weight: float | None = None) -> None:
    """Compile with the loss ``loss_name``: alone, or as the mask losses of a deep-supervision model
    beside its salt classifier's, weighted ``salt_weight`` (``train.salt_weight``; None: the default;
    :func:`segnet.models.heads.compile_losses`)."""
    from segnet.models import heads

    loss, weights = heads.compile_losses(model, loss_name, salt_weight)
    model.compile(optimizer=optimizer, loss=loss, loss_weights=weights)


def encoder_weights(cfg: Config):
    """``apply(model)`` for the pretrained encoder weights ``model.encoder_weights`` names, read or
    downloaded now; None when there are none. Re-seeds afterwards: building the source backbone draws
    random initial values, which must not shift the model's own initialisation."""
    import keras

    if cfg.model.encoder_weights is None:
        return None
    log(f"encoder weights: {cfg.model.encoder_weights}")
    apply = fetch_weights(cfg)
    keras.utils.set_random_seed(cfg.train.seed)
    return apply


def _build_or_restore(cfg: Config, run, rdir: Path, spec, strategy, state: TrainState | None, encoder_init=None):
    """Stage 2: a new model (params, config and a resume state at epoch -1 written before any epoch,
    so even a kill during the first epoch resumes this run) or the checkpoint of the resume state.
    A new model starts from the pretrained encoder weights ``encoder_init`` copies in (:func:`encoder_weights`;
    fetched here when the run was meant to resume), a restored one keeps its checkpoint's. ``run`` None: a
    multi-worker training's other worker, which builds or restores alike and logs and writes nothing."""
    import keras

    from segnet.models import build_model, count_params

    apply = None if state is not None else encoder_init or encoder_weights(cfg)
    with strategy.scope():
        if state is not None:
            model = load_checkpoint(rdir / state.checkpoint, initial=state.epoch < 0)
        else:
            model = build_model(cfg)
            if apply is not None:
                log(f"encoder weights: {apply(model)} encoder layers loaded from {cfg.model.encoder_weights}")
            compile_model(model, keras.optimizers.Adam(cfg.train.lr), cfg.train.loss, cfg.train.salt_weight)
    if state is not None:
        if run is not None:
            _relog_missing_epochs(run, state)
        return model, state
    if run is None:  # a multi-worker training's other worker: the chief logs the run and writes the state
        return model, TrainState(lr=cfg.train.lr, const_init=float("nan"))
    run.log_params(cfg.flat())
    run.log_text(cfg.to_yaml(), "config.yaml")
    state = TrainState(lr=cfg.train.lr, const_init=evaluate.const_response(model, spec))
    run.log_metrics({"params_count": count_params(model), "artifact_const_response_init": state.const_init})
    _save_checkpoint(model, state, rdir, improved=False)
    return model, state


def load_checkpoint(path: Path, initial: bool = False):
    """A checkpoint as a compiled Keras model. ``initial``: the one saved before the first epoch, whose
    optimizer has no state yet (Keras warns that it skips loading the optimizer's variables: there are
    none to load, so that warning is silenced there and only there)."""
    import warnings

    import keras

    with warnings.catch_warnings():
        if initial:
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        return keras.models.load_model(path)


def _save_checkpoint(model, state: TrainState, rdir: Path, improved: bool, snapshot: int | None = None) -> None:
    """Checkpoint files named by epoch, then the state that names them, then the old files go.
    ``snapshot``: the cycle whose best checkpoint this epoch is (a snapshot ensemble), if any."""
    tag = f"e{state.epoch + 1:04d}"  # e0000: the initial model
    old = {state.checkpoint, state.best_checkpoint, *state.snapshots}
    state.checkpoint = f"last_{tag}.keras"
    atomic_write(rdir / state.checkpoint, model.save)
    if improved:
        state.best_checkpoint = f"best_{tag}.keras"
        atomic_write(rdir / state.best_checkpoint, model.save)
    if snapshot is not None:
        state.snapshots[snapshot] = f"snapshot_c{snapshot}_{tag}.keras"
        atomic_write(rdir / state.snapshots[snapshot], model.save)
    state.save(rdir)
    for name in old - {state.checkpoint, state.best_checkpoint, *state.snapshots, ""}:
        (rdir / name).unlink(missing_ok=True)


def _snapshot_improved(cfg: Config, state: TrainState, epoch: int, score: float) -> int | None:
    """A snapshot ensemble (sgdr, cycles > 1): the cycle of ``epoch`` when ``score`` is its best so far (noted
    in the state; its checkpoint is the cycle's snapshot), else None. None always for a single model."""
    if cfg.train.cycles == 1:
        return None
    k = cycle_of(cfg, epoch)
    while len(state.snapshots) <= k:  # the cycle's first epoch
        state.snapshots.append("")
        state.snapshot_best.append(-1.0)
        state.snapshot_epoch.append(-1)
    if score <= state.snapshot_best[k]:
        return None
    state.snapshot_best[k], state.snapshot_epoch[k] = score, epoch
    return k


def _run_epoch(fit: _Fit, state: TrainState, epoch: int) -> bool:
    """Stage 3: one epoch (train, validate, checkpoint, state, metrics). True: stop early."""
    from segnet.models import heads

    cfg, model = fit.cfg, fit.model
    want_loss = cfg.train.finetune_loss if epoch >= _lovasz_from(cfg) else cfg.train.loss
    if heads.loss_name_of(model) != want_loss:
        log(f"epoch {epoch + 1}: fine-tuning with {want_loss}")
        with fit.strategy.scope():
            compile_model(model, model.optimizer, want_loss, cfg.train.salt_weight)
    lr = learning_rate(cfg, epoch, state)
    model.optimizer.learning_rate.assign(lr)

    # The epoch's order and augmentation depend on (seed, epoch) only: a resumed run sees what the
    # uninterrupted one would have seen.
    train_ds = make_dataset(fit.images[fit.train_idx], fit.masks[fit.train_idx], cfg, training=True, epoch=epoch)
    train_ds = heads.targets(model, train_ds)  # one mask target per loss of a deep-supervision model
    fit_verbose = 1 if sys.stdout.isatty() else 0
    t0 = time.perf_counter()
    if fit_verbose:
        log(f"epoch {epoch + 1}/{cfg.train.epochs}")
    hist = model.fit(train_ds, epochs=1, verbose=fit_verbose, shuffle=False)  # the pipeline shuffles
    if fit.strategy.num_replicas_in_sync > 1:  # each replica kept its own batch-norm statistics
        multiworker.replica_mean(fit.strategy, _moving_statistics(model))
    t_train = time.perf_counter() - t0
    scores = validation_scores(cfg, model, fit.val_images_net, fit.val_masks, get_loss(want_loss))
    epoch_time = time.perf_counter() - t0
    metrics = {
        "loss": float(hist.history["loss"][-1]), **scores, "lr": lr,
        "epoch_time_s": epoch_time, "train_images_per_s": len(fit.train_idx) / t_train,
    }
    if not all(math.isfinite(v) for v in metrics.values()):
        raise SegnetError(f"epoch {epoch + 1}: training diverged (loss {metrics['loss']}, val_loss "
                          f"{metrics['val_loss']}); lower train.lr (now {cfg.train.lr})")

    improved, snapshot = _record_epoch(cfg, state, epoch, metrics)
    if fit.run is not None:  # not on the other workers of a multi-worker training: the chief keeps the run
        _save_checkpoint(model, state, fit.rdir, improved, snapshot)
        fit.run.log_metrics(metrics, step=epoch)
    log(f"epoch {epoch + 1:>3}/{cfg.train.epochs}  loss {metrics['loss']:.4f}  val_loss {metrics['val_loss']:.4f}  "
        f"val_iou {metrics['val_iou']:.4f}  val_tgs_map {metrics['val_tgs_map']:.4f}{' *' if improved else '  '}  "
        f"lr {lr:.2e}  {epoch_time:.1f}s  {metrics['train_images_per_s']:.0f} img/s")
    patience = 0 if cfg.train.schedule == "sgdr" else cfg.train.early_stopping  # sgdr: every cycle runs
    if patience and state.wait >= patience and epoch < _lovasz_from(cfg):
        log(f"early stopping: no better val_tgs_map for {state.wait} epochs")
        return True
    return False


def _record_epoch(cfg: Config, state: TrainState, epoch: int, metrics: dict) -> tuple[bool, int | None]:
    """The state after ``epoch`` scored ``metrics``: best score and early-stopping wait, the plateau
    schedule's halving, the sgdr cycle's snapshot, history and training time. Returns (improved, the
    cycle whose snapshot this epoch is, or None)."""
    improved = metrics["val_tgs_map"] > state.best
    if improved:
        state.best, state.best_epoch, state.wait = metrics["val_tgs_map"], epoch, 0
    else:
        state.wait += 1
        if cfg.train.schedule == "plateau" and state.wait % 3 == 0:
            state.lr = max(cfg.train.min_lr, state.lr * 0.5)
    snapshot = _snapshot_improved(cfg, state, epoch, metrics["val_tgs_map"])
    state.epoch = epoch
    state.train_time_s += metrics["epoch_time_s"]
    for k in EPOCH_METRICS:
        state.history[k].append(metrics[k])
    return improved, snapshot


def _moving_statistics(model) -> list:
    """The moving means and variances of every batch-norm layer of ``model``."""
    return [v for v in model.non_trainable_variables if v.path.endswith(("/moving_mean", "/moving_variance"))]


def _finish(fit: _Fit, state: TrainState, spec, val_images, val_masks, val_ids) -> dict:
    """Stage 4: the best checkpoint becomes best.keras, is evaluated (threshold, artifacts, plots),
    and its metrics, learning curves and model are logged. A snapshot ensemble (sgdr, cycles > 1) is
    evaluated and logged instead of the best checkpoint: the mean of its snapshots' logits."""
    import keras

    from segnet import plots
    from segnet.models import count_params

    what = f"snapshot ensemble ({len(state.snapshots)} snapshots)" if state.snapshots else "best checkpoint"
    log(f"final evaluation of the {what} (threshold search, artifact metrics, plots)")
    best_path = fit.rdir / "best.keras"
    if state.best_checkpoint and (fit.rdir / state.best_checkpoint).exists():
        os.replace(fit.rdir / state.best_checkpoint, best_path)
        state.best_checkpoint = "best.keras"
        state.save(fit.rdir)
    best = keras.models.load_model(best_path)
    gate = _tune_gate(fit, best, best_path)
    snapshots = _final_snapshots(fit, state)
    final = evaluate.evaluate_and_log(fit.run, [m for _, m in snapshots] or best, fit.cfg, spec, val_images,
                                      val_masks, val_ids, prefix="")
    final.update(gate)
    final.update(
        best_val_tgs_map=state.best,
        best_val_iou=state.history["val_iou"][state.best_epoch],
        best_epoch=state.best_epoch + 1,
        train_time_s=state.train_time_s,
        params_count=count_params(best),
        **_snapshot_metrics(state),
    )
    fit.run.log_metrics(final)
    fit.run.log_figure(plots.plot_learning_curves(state.history), "plots/learning_curves.png")
    if fit.cfg.tracking.log_model:
        fit.run.log_model([p for p, _ in snapshots] or best_path, fit.cfg, final["best_threshold"])
    return final


def _final_snapshots(fit: _Fit, state: TrainState) -> list[tuple[Path, object]]:
    """A snapshot ensemble's (path, model) per cycle: its best checkpoint renamed ``snapshot_c{k}.keras``
    (the state follows each rename, so a kill here resumes into the same), loaded and gated like the best
    checkpoint; [] for a single model."""
    import keras

    from segnet.runs import snapshot_name

    out = []
    for k, name in enumerate(state.snapshots):
        path = fit.rdir / snapshot_name(k)
        if name != path.name and (fit.rdir / name).exists():
            os.replace(fit.rdir / name, path)
            state.snapshots[k] = path.name
            state.save(fit.rdir)
        model = keras.models.load_model(path)
        gate = _tune_gate(fit, model, path)
        fit.run.log_metrics({f"snapshot{k}_{key}": v for key, v in gate.items()})  # snapshot0_gate_threshold, ...
        out.append((path, model))
    return out


def _snapshot_metrics(state: TrainState) -> dict:
    """The count of snapshots and, per snapshot, its val_tgs_map and epoch (1-based); {} for a single model."""
    out = {"snapshots": len(state.snapshots)} if state.snapshots else {}
    for k, (score, epoch) in enumerate(zip(state.snapshot_best, state.snapshot_epoch, strict=True)):
        out.update({f"snapshot{k}_val_tgs_map": score, f"snapshot{k}_epoch": epoch + 1})
    return out


def _tune_gate(fit: _Fit, model, path: Path) -> dict:
    """A deep-supervision model: its empty-mask gate's threshold tuned on validation and saved into the
    model file (so evaluation, predict and the logged model all gate alike); {} for other models."""
    from segnet.models import heads

    if not heads.is_supervised(model):
        return {}
    gate = heads.tune_gate(model, fit.val_images_net, fit.val_masks, fit.cfg.data.resize_mode, fit.cfg.train.batch_size,
                           tta=fit.cfg.eval.tta)
    atomic_write(path, model.save)
    log(f"empty-mask gate: threshold {gate['gate_threshold']:.2f} empties {gate['gate_emptied']:.1%} of validation "
        f"images ({gate['gate_false_empty']:.1%} wrongly); tgs_map {gate['val_tgs_map_ungated']:.4f} ungated -> "
        f"{gate['val_tgs_map_gated']:.4f} gated (threshold 0.5{', flip TTA' if fit.cfg.eval.tta else ''}); "
        f"a perfect gate {gate['val_tgs_map_perfect_gate']:.4f} (classifier AUC {gate['gate_auc']:.3f})")
    return gate


def _relog_missing_epochs(run, state: TrainState) -> None:
    """A kill between the state write and the metric batch leaves epochs on disk but not in MLflow."""
    logged = {m.step for m in run.metric_history("val_tgs_map")}
    for epoch in range(state.epoch + 1):
        if epoch not in logged:
            run.log_metrics({k: state.history[k][epoch] for k in EPOCH_METRICS}, step=epoch)

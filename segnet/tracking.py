"""MLflow tracking: the one module that talks to the tracking store (``segnet.serving`` imports
mlflow.pyfunc only for the logged model's class, which must load without the rest of segnet).

Names (docs/architecture.md, "MLflow names"): params are the flattened resolved config, tags ``segnet.*``,
per-epoch metrics with ``step=epoch``, final metrics, artifacts (config.yaml, plots/, predictions/, the model).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from segnet import paths
from segnet.errors import SegnetError

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
MODEL_NAME = "model"

# MLflow's own INFO lines (alembic migrations, "created experiment") are noise for a segnet user.
for _name in ("mlflow", "alembic"):
    logging.getLogger(_name).setLevel(logging.WARNING)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def tracking_uri(cfg=None) -> str:
    """``$MLFLOW_TRACKING_URI``, else ``tracking.uri``, else the embedded ``sqlite:///mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if cfg is not None and cfg.tracking.uri:
        return cfg.tracking.uri
    return paths.DEFAULT_TRACKING_URI


# A tracking server that does not answer is said at once, not after MLflow's minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")

_READY: set[str] = set()  # stores checked (and, for a new sqlite file, created) by this process


def client(uri: str) -> MlflowClient:
    """A client on a usable store: checked once per process and URI (see ``prepare_store``)."""
    if uri not in _READY:
        prepare_store(uri)
        _READY.add(uri)
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:"):
        return None
    rest = uri[len("sqlite:"):]
    if not rest.startswith("///") or rest == "///:memory:":
        return None
    return Path(rest[3:].split("?", 1)[0])


def prepare_store(uri: str) -> None:
    """Fail in one line, before any work, on a store that cannot be used.

    A new sqlite file is created (MLflow's schema migrations) under an exclusive lock beside it: two
    processes that migrate one new file at once break it for good. An http(s) server gets a short,
    bounded health check instead of MLflow's minutes of silent retries.
    """
    from segnet import locks

    db = _sqlite_path(uri)
    if uri.startswith(("http://", "https://")):
        _check_server(uri)
        _probe(uri)  # it answers, but as an MLflow server? (another service on that port, a proxy refusing us)
        return
    if db is not None:
        if db.is_dir():
            raise SegnetError(f"tracking store {uri}: {db} is a folder, not an sqlite file")
        if not db.parent.is_dir():
            raise SegnetError(f"tracking store {uri}: folder {db.parent} does not exist")
        if db.exists() and db.stat().st_size and db.open("rb").read(16) != b"SQLite format 3\x00":
            raise SegnetError(f"tracking store {uri}: {db} is not an sqlite database (corrupt, or another file)")
        if not db.exists() or not db.stat().st_size:  # a new store: MLflow must write its tables
            check_writable(uri)
        with locks.store_lock(db.with_name(db.name + "-segnet.lock")):
            _probe(uri)
        return
    _probe(uri)


def check_writable(uri: str) -> None:
    """Commands that log need a writable sqlite file and folder (sqlite writes its journal beside it)."""
    db = _sqlite_path(uri)
    if db is None:
        return
    for p in (db, db.parent) if db.exists() else (db.parent,):
        if not os.access(p, os.W_OK):
            raise SegnetError(f"tracking store {uri}: {p} is read-only; make it writable or point "
                              "MLFLOW_TRACKING_URI at another store")


def _probe(uri: str) -> None:
    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as e:  # an unusable store raises whatever its driver raises
        why = _first_line(e).split(" Response body:")[0]  # a web page's HTML is no part of one line
        raise SegnetError(f"tracking store {uri} cannot be used: {why}") from None


def _check_server(uri: str, attempts: int = 3, timeout: float = 3.0) -> None:
    """The server answers ``GET /health`` within a few seconds, or a one-line error saying so."""
    import urllib.error
    import urllib.request

    url = uri.rstrip("/") + "/health"
    reason = ""
    for i in range(attempts):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (the user's own server)
                if r.status < 500:
                    return
                reason = f"HTTP {r.status}"
        except urllib.error.HTTPError as e:
            if e.code < 500:  # an auth proxy or an older server without /health: it answers
                return
            reason = f"HTTP {e.code}"
        except (OSError, ValueError) as e:
            reason = _first_line(getattr(e, "reason", None) or e) if not isinstance(e, ValueError) else _first_line(e)
        if i + 1 < attempts:
            time.sleep(1.0)
    raise SegnetError(f"cannot reach the MLflow tracking server at {uri} ({reason}); start it, or unset "
                      "MLFLOW_TRACKING_URI (and tracking.uri) to use the embedded sqlite store")


def experiment_id(uri: str, name: str) -> str:
    """Get or create the experiment, tagged as model training so MLflow 3's UI opens on the runs table."""
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is None:
        try:
            exp_id = c.create_experiment(name, artifact_location=_artifact_location(uri, name),
                                         tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except mlflow.exceptions.MlflowException:  # created meanwhile by a parallel job
            exp_id = c.get_experiment_by_name(name).experiment_id
    else:
        exp_id = exp.experiment_id
        if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            c.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp_id


def _artifact_location(uri: str, experiment: str) -> str | None:
    """For an embedded sqlite store, artifacts live beside the database (not in whatever folder the
    process happens to run from); a server decides for itself."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        return (db.parent / "mlartifacts" / experiment).resolve().as_uri()
    return None


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=paths.ROOT, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def runs_url(uri: str, exp_id: str, host: str = "127.0.0.1", port: int = 5000) -> str:
    base = uri if uri.startswith("http") else f"http://{host}:{port}"
    return f"{base.rstrip('/')}/#/experiments/{exp_id}/runs?workflowType=machine_learning"


class Run:
    """A handle on one MLflow run: logging goes through the client, never through global state, so
    several runs (a parent and its children, or parallel jobs) can be open in one process."""

    def __init__(self, uri: str, run_id: str):
        check_writable(uri)
        self.uri = uri
        self.run_id = run_id
        self.client = client(uri)

    # -- logging -----------------------------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        existing = self.client.get_run(self.run_id).data.params
        items = [Param(k, _param_str(v)) for k, v in params.items() if k not in existing]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        """One batch, one transaction: an epoch's metrics are all there or none are."""
        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v in metrics.items() if v is not None]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def metric_history(self, key: str) -> list:
        return self.client.get_metric_history(self.run_id, key)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_figure(self, fig, artifact_file: str) -> None:
        import matplotlib.pyplot as plt

        self.client.log_figure(self.run_id, fig, artifact_file)
        plt.close(fig)

    def log_dataframe(self, df, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / Path(artifact_file).name
            df.to_csv(p, index=False)
            parent = str(Path(artifact_file).parent)
            self.log_artifact(p, None if parent == "." else parent)

    def log_model(self, keras_path: str | Path | list, cfg, threshold: float) -> None:
        """Log the run's model as an MLflow pyfunc model (``segnet.serving.SaltSegmenter``) that loads with
        ``mlflow.pyfunc.load_model`` and serves with ``mlflow models serve`` without segnet installed.

        The Keras file at ``keras_path`` is the artifact ``keras_model`` (a list of files: a fold or snapshot
        ensemble that averages their logits); the segnet package travels as ``code_paths``; the run's
        data.size / resize_mode, eval.tta and ``threshold`` go in the model.
        """
        import segnet
        from segnet import serving

        files = [keras_path] if isinstance(keras_path, str | Path) else list(keras_path)
        settings = serving.settings_from_config(cfg, threshold, members=len(files))
        with _active(self), _quiet_model_logging():
            mlflow.pyfunc.log_model(
                name=MODEL_NAME,
                python_model=serving.SaltSegmenter(settings),
                artifacts={name: str(f) for name, f in zip(serving.artifact_names(len(files)), files, strict=True)},
                code_paths=[str(Path(segnet.__file__).resolve().parent)],
                signature=serving.signature(settings),
                pip_requirements=_serving_requirements(),
                metadata={"segnet": settings},
            )

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)
        _open_runs.pop(self.run_id, None)

    def info(self):
        return self.client.get_run(self.run_id)


def _param_str(v: Any) -> str:
    s = "null" if v is None else str(v)
    return s[:6000]


@contextlib.contextmanager
def _active(run: Run) -> Iterator[None]:
    """Make ``run`` the active fluent run for the few MLflow APIs that need one (model logging)."""
    mlflow.set_tracking_uri(run.uri)
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run.run_id:
        yield
        return
    with mlflow.start_run(run_id=run.run_id, nested=active is not None, log_system_metrics=False):
        yield
    # start_run's context ends the run FINISHED; it is still being written to, so reopen it.
    run.client.update_run(run.run_id, status="RUNNING")


# Runs this process created or reopened and has not ended yet. A run is entered here in the same
# signal-free step that makes it RUNNING, so a Ctrl-C or SIGTERM at any moment after that (before its
# ``run_guard`` is entered, say) still finds it: the CLI ends what is left here on its way out.
_open_runs: dict[str, Run] = {}


def create_run(uri: str, experiment: str, name: str, tags: dict[str, Any], parent_run_id: str | None = None) -> Run:
    check_writable(uri)
    exp_id = experiment_id(uri, experiment)
    all_tags = {"mlflow.runName": name, "mlflow.source.git.commit": git_commit(), **tags}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    c = client(uri)
    with _signals_deferred():
        r = c.create_run(exp_id, run_name=name, tags={k: str(v) for k, v in all_tags.items()})
        run = _open_runs[r.info.run_id] = Run(uri, r.info.run_id)
    return run


def reopen_run(uri: str, run_id: str) -> Run:
    c = client(uri)
    with _signals_deferred():
        c.update_run(run_id, status="RUNNING")
        run = _open_runs[run_id] = Run(uri, run_id)
    return run


def end_after(run: Run, error: BaseException) -> None:
    """End ``run`` after ``error`` cut it short: KILLED if a Ctrl-C or SIGTERM did (directly, or as
    another error it surfaced as), else FAILED. Further signals wait until the status is written."""
    from segnet.errors import stop_requested

    stopped = isinstance(error, KeyboardInterrupt) or stop_requested() is not None
    with _signals_held():
        run.end("KILLED" if stopped else "FAILED")


def end_open_runs(stopped: bool) -> list[str]:
    """End every run this process opened and left RUNNING: KILLED if it was stopped, else FAILED.

    The CLI calls it when a command ends with an exception; ``run_guard`` has already ended the runs
    it guards, so this catches the ones a signal or error hit between their creation and their guard.
    """
    ended = []
    with _signals_held():
        for run in list(_open_runs.values()):
            with contextlib.suppress(Exception):
                run.end("KILLED" if stopped else "FAILED")
                ended.append(run.run_id)
            _open_runs.pop(run.run_id, None)
    return ended


def find_runs(uri: str, experiment: str, filter_string: str, max_results: int = 100) -> list:
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return c.search_runs([exp.experiment_id], filter_string=filter_string, max_results=max_results,
                         order_by=["attributes.start_time DESC"])


def get_run(uri: str, run_id: str):
    db = _sqlite_path(uri)
    if db is not None and not db.exists():  # a mistyped store path: say so, and do not create an empty store
        raise SegnetError(f"run '{run_id}' not found: the tracking store {uri} does not exist (no file {db})")
    try:
        return client(uri).get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise SegnetError(f"run '{run_id}' not found in the tracking store {uri}") from None


def download_artifact(uri: str, run_id: str, artifact_path: str, dst: str | Path) -> Path:
    try:
        return Path(client(uri).download_artifacts(run_id, artifact_path, str(dst)))
    except (mlflow.exceptions.MlflowException, OSError) as e:
        raise SegnetError(f"run '{run_id}' has no artifact '{artifact_path}' ({str(e).splitlines()[0]})") from None


def download_logged_keras(uri: str, run_id: str, dst: str | Path) -> list[Path]:
    """The Keras files inside the run's logged pyfunc model, downloaded into ``dst``: its ``keras_model``
    artifact, or an ensemble's ``keras_model_0``, ``keras_model_1``, ... in order (a fold or snapshot
    ensemble); for runs logged with the older ``mlflow.keras`` flavour, ``model/data/*.keras``."""
    import yaml

    from segnet.serving import artifact_names

    mlmodel = download_artifact(uri, run_id, f"{MODEL_NAME}/MLmodel", dst)
    flavors = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {})
    artifacts = flavors.get("python_function", {}).get("artifacts", {})
    if artifacts:
        return [download_artifact(uri, run_id, f"{MODEL_NAME}/{artifacts[name]['path']}", dst)
                for name in artifact_names(len(artifacts))]
    data = download_artifact(uri, run_id, f"{MODEL_NAME}/{flavors.get('keras', {}).get('data', 'data')}", dst)
    found = sorted(data.rglob("*.keras"))
    if not found:
        raise SegnetError(f"run '{run_id}' has no Keras file in its logged model")
    return found[:1]


def load_logged_models(uri: str, run_id: str) -> list:
    """The run's logged Keras models (``download_logged_keras``: one, or an ensemble's members), uncompiled
    (no custom loss needed; segnet's layers registered first)."""
    import keras

    from segnet.models import register_with_keras

    register_with_keras()  # segnet's custom layers and losses, for Keras to load the model
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return [keras.models.load_model(f, compile=False) for f in download_logged_keras(uri, run_id, tmp)]
        except (ValueError, TypeError, OSError) as e:
            raise SegnetError(f"run '{run_id}' has no loadable model ({_first_line(e)})") from None


@contextlib.contextmanager
def run_guard(run: Run) -> Iterator[Run]:
    """End the run FINISHED on success, KILLED on Ctrl-C or SIGTERM, FAILED on any error.

    While the final status is written, further Ctrl-C or SIGTERM are held back: a second signal must
    not leave the run RUNNING.
    """
    from segnet.errors import raise_on_sigint, raise_on_sigterm

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    with contextlib.suppress(ValueError):  # not in the main thread: leave signals alone
        signal.signal(signal.SIGTERM, raise_on_sigterm)
        if previous[signal.SIGINT] is signal.default_int_handler:  # an ignored SIGINT stays ignored
            signal.signal(signal.SIGINT, raise_on_sigint)
    try:
        yield run
    except BaseException as e:
        end_after(run, e)
        raise
    else:
        with _signals_held():
            run.end("FINISHED")
    finally:
        for sig, handler in previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back for the duration (main thread only), then act on one that came:
    raise as its handler would have. Nothing between two statements inside can be cut apart."""
    from segnet.errors import raise_on_sigint, raise_on_sigterm

    came: list[int] = []
    with _signal_handlers(lambda signum, frame: came.append(signum)) as saved:
        yield
    if came and saved.get(came[0]) != signal.SIG_IGN:
        handler = saved[came[0]]
        if not callable(handler):  # SIG_DFL: end as Ctrl-C or SIGTERM does in segnet
            handler = raise_on_sigterm if came[0] == signal.SIGTERM else raise_on_sigint
        handler(came[0], None)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Ignore SIGINT and SIGTERM for the duration (main thread only), then restore the handlers."""
    with _signal_handlers(signal.SIG_IGN):
        yield


@contextlib.contextmanager
def _signal_handlers(handler) -> Iterator[dict]:
    """``handler`` for SIGINT and SIGTERM for the duration (main thread only; elsewhere nothing changes);
    yields the handlers it replaced, restored on the way out."""
    saved = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):
            saved[sig] = signal.signal(sig, handler)
    try:
        yield saved
    finally:
        for sig, h in saved.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, h)


# -- the logged model (helpers of Run.log_model and load_logged_models) --------------------------------
def _serving_requirements() -> list[str]:
    """Pinned versions of what the pyfunc model imports when it loads and predicts (mlflow is added by MLflow)."""
    from importlib import metadata

    import keras
    import tensorflow as tf

    reqs = [f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"]
    for dist in ("numpy", "pandas", "pillow", "opencv-python-headless"):
        try:
            reqs.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    return reqs


@contextlib.contextmanager
def _quiet_model_logging() -> Iterator[None]:
    """Drop two of MLflow's generic notes that do not apply to segnet's model: no input example (the
    signature is explicit; an example would be 2 images of JSON) and CloudPickle (only a dict of settings
    and a class of the logged code are pickled)."""
    import warnings

    class _Filter(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "CloudPickle" not in record.getMessage()

    logger, flt = logging.getLogger("mlflow.pyfunc"), _Filter()
    logger.addFilter(flt)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"(?s).*input example was not provided")
            yield
    finally:
        logger.removeFilter(flt)


# -- MLflow-native review: dataset lineage, the model registry, system metrics -------------------------
DATASET_NAMES = {"tgs": "tgs-salt", "synthetic": "synthetic"}
DEFAULT_REGISTERED_MODEL = "segnet-tgs"
DEFAULT_ALIAS = "champion"
# The columns a segnet dataset has for a run (the images and masks themselves stay in the folder).
_DATASET_SCHEMA = {"mlflow_colspec": [{"type": "string", "name": "id", "required": True},
                                      {"type": "double", "name": "coverage", "required": True},
                                      {"type": "long", "name": "fold", "required": True}]}


def dataset_name(kind: str) -> str:
    """The MLflow dataset name of a folder of this kind: ``tgs-salt`` (the real data) or ``synthetic``."""
    return DATASET_NAMES.get(kind, kind)


def fold_dataset_name(kind: str, fold: int, n_folds: int, fold_seed: int = 0) -> str:
    """The name of one validation fold of a folder, e.g. ``synthetic/fold-0-of-5``.

    MLflow keeps one input per (name, digest) and run, and one schema and profile per (name, digest)
    and experiment: the fold is a dataset of its own, with the folder's fingerprint as its digest.
    """
    return f"{dataset_name(kind)}/fold-{fold}-of-{n_folds}" + (f"-seed-{fold_seed}" if fold_seed else "")


def _dataset_profile(coverage, **extra) -> dict:
    import numpy as np

    cov = np.asarray(coverage, dtype=np.float64)
    return {"num_rows": int(len(cov)), "salt_images": int((cov > 0).sum()),
            "mean_coverage": round(float(cov.mean()) if len(cov) else 0.0, 4), **extra}


def log_dataset(run: Run, name: str, digest: str, folder: str | Path, context: str, profile: dict) -> None:
    """One dataset input of ``run`` (``mlflow.log_input`` through the client): the runs table's Dataset
    column and the run page's Datasets section show it; ``dataset.name`` / ``dataset.digest`` /
    ``dataset.context`` filter on it. Logging the same (name, digest) twice for a run keeps the first."""
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    ds = Dataset(name=name, digest=digest, source_type="local",
                 source=json.dumps({"uri": str(Path(folder).resolve())}),
                 schema=json.dumps(_DATASET_SCHEMA), profile=json.dumps(profile))
    _log_inputs(run, [DatasetInput(ds, [InputTag(MLFLOW_DATASET_CONTEXT, context)])])


def log_children_inputs(parent: Run, child_run_ids, context: str) -> int:
    """An ablation's or a cv's parent: the datasets its children trained on (their ``training`` inputs,
    one per name and digest) as its own inputs with ``context`` (``ablation`` | ``cross-validation``), so
    the runs table's Dataset column shows what the whole comparison saw. Returns how many."""
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    seen = {}
    for run_id in dict.fromkeys(child_run_ids):
        inputs = parent.client.get_run(run_id).inputs  # None from some stores when a run has none
        for di in (inputs.dataset_inputs if inputs else []):
            if {t.key: t.value for t in di.tags}.get(MLFLOW_DATASET_CONTEXT) == "training":
                seen.setdefault((di.dataset.name, di.dataset.digest), di.dataset)
    if seen:
        _log_inputs(parent, [DatasetInput(ds, [InputTag(MLFLOW_DATASET_CONTEXT, context)]) for ds in seen.values()])
    return len(seen)


def _log_inputs(run: Run, inputs: list) -> None:
    for attempt in range(3):
        try:
            run.client.log_inputs(run.run_id, inputs)
            return
        except mlflow.exceptions.MlflowException as e:
            # Two runs logging the same new dataset at once (parallel ablation or cv children): MLflow
            # looks the dataset up, then inserts it, and the slower insert hits the unique key. The row
            # exists now, so the retry links it.
            if "UNIQUE constraint failed" not in str(e) or attempt == 2:
                raise
            time.sleep(0.1 * (attempt + 1))


def log_training_inputs(run: Run, data, cfg, train_idx, val_idx) -> None:
    """A training run's inputs: the folder (context ``training``: every fold but the validation fold
    trains) and its validation fold (context ``validation``), both with the data fingerprint as digest.
    Idempotent: a resumed run logs them again and the store keeps the first."""
    from segnet.data.folds import coverage_of

    cov = coverage_of(data.masks)
    d = cfg.data
    log_dataset(run, dataset_name(data.kind), data.fingerprint, data.dir, "training",
                _dataset_profile(cov, images=int(len(cov))))
    log_dataset(run, fold_dataset_name(data.kind, d.fold, d.n_folds, d.fold_seed), data.fingerprint, data.dir,
                "validation", _dataset_profile(cov[val_idx], fold=int(d.fold), n_folds=int(d.n_folds),
                                               train_rows=int(len(train_idx))))


def log_evaluation_input(run: Run, data, cfg, idx, same_data: bool) -> None:
    """What ``segnet evaluate`` scored (context ``evaluation``): the run's validation fold on its own
    data (already the run's ``validation`` input, so the store keeps that one), else the whole folder."""
    from segnet.data.folds import coverage_of

    cov = coverage_of(data.masks[idx])
    if same_data:
        d = cfg.data
        name = fold_dataset_name(data.kind, d.fold, d.n_folds, d.fold_seed)
        profile = _dataset_profile(cov, fold=int(d.fold), n_folds=int(d.n_folds))
    else:
        name, profile = dataset_name(data.kind), _dataset_profile(cov, images=int(len(cov)))
    log_dataset(run, name, data.fingerprint, data.dir, "evaluation", profile)


@contextlib.contextmanager
def system_metrics(run: Run, enabled: bool = True, interval: float = 10.0) -> Iterator[None]:
    """MLflow's system metrics (``system/cpu_utilization_percentage``, ``system/system_memory_usage_*``,
    and on an NVIDIA GPU ``system/gpu_0_utilization_percentage``, ``system/gpu_0_memory_usage_*``...)
    sampled every ``interval`` s ($MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL wins) while the block runs.

    The run is driven through the client, not ``mlflow.start_run``, so the monitor is started here for
    its id; a resumed run continues its steps. It stops (and flushes) on every way out of the block.
    """
    monitor = None
    if enabled:
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(run.run_id, sampling_interval=interval, resume_logging=True,
                                           tracking_uri=run.uri)
            monitor.start()
        except Exception as e:  # psutil missing, an odd platform: training goes on without them
            print(f"note: no system metrics ({_first_line(e)})", flush=True)
            monitor = None
    try:
        yield
    finally:
        if monitor is not None:
            monitor.finish()  # wakes the sampling thread, joins it, flushes what it sampled


def _model_version_uri(name: str, version) -> str:
    return f"models:/{name}/{version}"


def logged_model_id(uri: str, run_id: str) -> str | None:
    """The id of the run's logged model ``model`` (MLflow 3 LoggedModel), or None when it logged none."""
    c = client(uri)
    info = get_run(uri, run_id)
    for out in getattr(info.outputs, "model_outputs", None) or []:
        with contextlib.suppress(mlflow.exceptions.MlflowException):
            if c.get_logged_model(out.model_id).name == MODEL_NAME:
                return out.model_id
    found = c.search_logged_models(experiment_ids=[info.info.experiment_id],
                                   filter_string=f"source_run_id = '{run_id}' AND name = '{MODEL_NAME}'",
                                   max_results=1)
    return found[0].model_id if found else None


def _has_run_model(uri: str, run_id: str) -> bool:
    with contextlib.suppress(mlflow.exceptions.MlflowException, OSError):
        return any(Path(a.path).name == "MLmodel" for a in client(uri).list_artifacts(run_id, MODEL_NAME))
    return False


def register_model(uri: str, run_id: str, name: str = DEFAULT_REGISTERED_MODEL, alias: str | None = DEFAULT_ALIAS,
                   tags: dict[str, Any] | None = None, description: str | None = None):
    """Register the run's logged model (``runs:/<id>/model``) as a version of ``name`` and point
    ``alias`` at it. A run already registered under ``name`` keeps its version (tags and alias are
    updated), so registering twice adds no version. Returns the ModelVersion."""
    c = client(uri)
    info = get_run(uri, run_id)
    model_id = logged_model_id(uri, run_id)
    if model_id is None and not _has_run_model(uri, run_id):
        raise SegnetError(f"run '{run_id}' has no logged model (tracking.log_model=false, or it did not "
                          "finish); nothing to register")
    try:
        with contextlib.suppress(mlflow.exceptions.RestException, mlflow.exceptions.MlflowException):
            c.create_registered_model(name, description="segnet U-Net salt segmentation models (pyfunc: "
                                      "image (N,101,101,1) float32 -> probability and mask)")
        existing = list(c.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"))
        all_tags = {k: str(v) for k, v in (tags or {}).items()}
        if existing:
            mv = max(existing, key=lambda v: int(v.version))
            for k, v in all_tags.items():
                c.set_model_version_tag(name, mv.version, k, v)
        else:
            source = f"models:/{model_id}" if model_id else f"{info.info.artifact_uri.rstrip('/')}/{MODEL_NAME}"
            mv = c.create_model_version(name, source, run_id=run_id, tags=all_tags, description=description,
                                        model_id=model_id)
            if model_id:  # what mlflow.register_model adds: the logged model's page lists its versions
                _link_logged_model(c, model_id, name, mv.version)
        if alias:
            c.set_registered_model_alias(name, alias, mv.version)
    except mlflow.exceptions.MlflowException as e:
        raise SegnetError(f"cannot register run '{run_id}' as '{name}': {_first_line(e)}") from None
    return c.get_model_version(name, mv.version)


def _link_logged_model(c: MlflowClient, model_id: str, name: str, version) -> None:
    import json

    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    with contextlib.suppress(mlflow.exceptions.MlflowException, ValueError):
        known = json.loads(c.get_logged_model(model_id).tags.get(MLFLOW_MODEL_VERSIONS) or "[]")
        if any(k.get("name") == name and str(k.get("version")) == str(version) for k in known):
            return  # MLflow 3.17's create_model_version(model_id=...) links it already: listed once
        c.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(
            [*known, {"name": name, "version": version}])})


def registry_tags(info) -> dict[str, Any]:
    """Version tags from a finished training run (or cv parent: its out-of-fold scores): what it is, how
    good, and on which data."""
    tags, metrics = info.data.tags, info.data.metrics
    out = {k: tags[k] for k in ("segnet.variant", "segnet.decoder", "segnet.dataset", "segnet.data_fingerprint",
                                "segnet.config_hash", "segnet.seed", "segnet.ablation_id", "segnet.role",
                                "segnet.cv_id") if k in tags}
    for m in ("best_val_tgs_map", "val_tgs_map_tuned", "best_val_iou", "best_threshold",
              "oof_tgs_map", "oof_iou", "oof_threshold", "fold_tgs_map_mean", "fold_tgs_map_std"):
        if m in metrics:
            out[f"segnet.{m}"] = f"{metrics[m]:.4f}"
    return out


def resolve_model_uri(uri: str, model_uri: str) -> str:
    """The source run id of ``models:/<name>@<alias>`` or ``models:/<name>/<version>``."""
    import re

    m = re.fullmatch(r"models:/([^@/]+)(?:@([^@/]+)|/(\d+))", model_uri.strip())
    if not m:
        raise SegnetError(f"--model '{model_uri}' must look like models:/<name>@<alias> or models:/<name>/<version>")
    name, alias, version = m.groups()
    c = client(uri)
    try:
        c.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        raise SegnetError(f"no registered model '{name}' in the tracking store {uri} "
                          "(register one with `segnet register --run-id <id>`)") from None
    try:
        mv = c.get_model_version_by_alias(name, alias) if alias else c.get_model_version(name, version)
    except mlflow.exceptions.MlflowException:
        known = sorted(c.get_registered_model(name).aliases or {}) if alias else []
        what = f"alias '{alias}'" if alias else f"version {version}"
        hint = f" (its aliases: {', '.join(known)})" if alias and known else ""
        raise SegnetError(f"registered model '{name}' has no {what}{hint}") from None
    if not mv.run_id:
        raise SegnetError(f"{model_uri} (version {mv.version}) was not registered from a segnet run")
    return mv.run_id

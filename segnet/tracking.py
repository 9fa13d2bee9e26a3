"""MLflow tracking: the only module that imports mlflow.

Names follow DESIGN.md: params are the flattened resolved config, tags ``segnet.*``, per-epoch metrics
with ``step=epoch``, final metrics, artifacts (config.yaml, plots/, predictions/, the model).
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


def client(uri: str) -> MlflowClient:
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


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


def serve_ui(host: str = "127.0.0.1", port: int = 5000, experiment: str = "segnet") -> int:
    """Serve the MLflow UI over the tracking store and print the direct link to the runs table."""
    import sys

    uri = tracking_uri()
    exp_id = experiment_id(uri, experiment)
    if uri.startswith("http"):
        print(f"the tracking store is a server: open {runs_url(uri, exp_id)}", flush=True)
        return 0
    print(f"MLflow UI for {uri}\nopen: {runs_url(uri, exp_id, host, port)}\n(Ctrl-C to stop)", flush=True)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 0


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

    def log_keras_model(self, model, example) -> None:
        """Log the Keras model with a tensor signature; it reloads with ``mlflow.pyfunc.load_model``."""
        import keras
        import tensorflow as tf
        from mlflow.models import infer_signature

        signature = infer_signature(example, model.predict(example, verbose=0))
        with _active(self):
            mlflow.keras.log_model(
                model,
                name=MODEL_NAME,
                signature=signature,
                pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"],
            )

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)

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


def create_run(uri: str, experiment: str, name: str, tags: dict[str, Any], parent_run_id: str | None = None) -> Run:
    exp_id = experiment_id(uri, experiment)
    all_tags = {"mlflow.runName": name, "mlflow.source.git.commit": git_commit(), **tags}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    r = client(uri).create_run(exp_id, run_name=name, tags={k: str(v) for k, v in all_tags.items()})
    return Run(uri, r.info.run_id)


def reopen_run(uri: str, run_id: str) -> Run:
    c = client(uri)
    c.update_run(run_id, status="RUNNING")
    return Run(uri, run_id)


def find_runs(uri: str, experiment: str, filter_string: str, max_results: int = 100) -> list:
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return c.search_runs([exp.experiment_id], filter_string=filter_string, max_results=max_results,
                         order_by=["attributes.start_time DESC"])


def get_run(uri: str, run_id: str):
    try:
        return client(uri).get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise SegnetError(f"run '{run_id}' not found in the tracking store {uri}") from None


def download_artifact(uri: str, run_id: str, artifact_path: str, dst: str | Path) -> Path:
    try:
        return Path(client(uri).download_artifacts(run_id, artifact_path, str(dst)))
    except (mlflow.exceptions.MlflowException, OSError) as e:
        raise SegnetError(f"run '{run_id}' has no artifact '{artifact_path}' ({str(e).splitlines()[0]})") from None


def load_logged_model(uri: str, run_id: str):
    """The run's logged Keras model (segnet's custom layers registered first)."""
    import segnet.models  # noqa: F401  (registers the custom layers)

    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.keras.load_model(f"runs:/{run_id}/{MODEL_NAME}")
    except (mlflow.exceptions.MlflowException, OSError) as e:
        raise SegnetError(f"run '{run_id}' has no loadable model ({str(e).splitlines()[0]})") from None


@contextlib.contextmanager
def run_guard(run: Run) -> Iterator[Run]:
    """End the run FINISHED on success, KILLED on Ctrl-C or SIGTERM, FAILED on any error."""
    previous = signal.getsignal(signal.SIGTERM)

    def _term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    with contextlib.suppress(ValueError):  # not in the main thread: leave signals alone
        signal.signal(signal.SIGTERM, _term)
    try:
        yield run
    except KeyboardInterrupt:
        run.end("KILLED")
        raise
    except BaseException:
        run.end("FAILED")
        raise
    else:
        run.end("FINISHED")
    finally:
        with contextlib.suppress(ValueError, TypeError):
            signal.signal(signal.SIGTERM, previous)

"""Multi-worker training of one model (``train.strategy: multi_worker``): TensorFlow's
``MultiWorkerMirroredStrategy``, configured by the standard ``TF_CONFIG`` environment variable.

Every worker runs the same ``segnet train`` command with its own ``TF_CONFIG`` (same ``cluster``, its own
``task``). The chief (task type ``chief``, or ``worker`` 0 when the cluster has no chief) opens the MLflow
run, logs, and writes the checkpoints and the resume state; it tells the others the run id (``share_run``).
The others take part in every collective operation and in nothing else:

* building or restoring the model: variables are created together, their initial values broadcast from
  the chief;
* ``model.fit``: gradients are all-reduced, so every worker holds the same weights; BatchNormalization's
  moving statistics are averaged after each epoch (``replica_mean``);
* the per-epoch validation, ``model.predict`` under the strategy: each worker predicts its share of the
  images and all get every prediction back, so all compute the same scores and take the same decisions
  (best epoch, plateau, early stopping, snapshots).

On resume every worker loads the checkpoint the chief's resume state names, so the runs folder must be one
that every worker sees (``SEGNET_RUNS_DIR`` on a shared file system; on one machine the default is). After
the last epoch the others wait (``barrier``) until the chief has evaluated and logged the run.

TensorFlow is imported on first use, not with this module: ``role`` checks ``TF_CONFIG`` before any work.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from segnet.errors import ConfigError, SegnetError

JOBS = ("chief", "worker")  # the task types of a MultiWorkerMirroredStrategy cluster
_RUN_ID_BYTES = 64  # room for an MLflow run id (32 hex characters) in the broadcast
EXAMPLE = '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'


@dataclass(frozen=True)
class Role:
    """This process's task in the cluster: its type and index, the number of tasks, who the chief is."""

    task_type: str
    index: int
    workers: int
    chief_task: str

    @property
    def task(self) -> str:
        return f"{self.task_type}:{self.index}"

    @property
    def chief(self) -> bool:
        return self.task == self.chief_task


def role(environ=None) -> Role:
    """This process's :class:`Role`, read from ``TF_CONFIG``; a one-line ConfigError when it is missing or
    malformed (what MultiWorkerMirroredStrategy would reject later, or hang on)."""
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    if not raw:
        raise ConfigError(f"train.strategy=multi_worker needs the TF_CONFIG environment variable on every worker, "
                          f"e.g. TF_CONFIG='{EXAMPLE}' (see README, Multi-worker training)")
    try:
        tf_config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({e}); expected e.g. {EXAMPLE}") from None
    cluster, task = _cluster(tf_config), _task(tf_config)
    if task["type"] not in cluster:
        raise ConfigError(f"TF_CONFIG task type {task['type']!r} is not a job of its cluster "
                          f"({', '.join(cluster)})")
    if not 0 <= task["index"] < len(cluster[task["type"]]):
        raise ConfigError(f"TF_CONFIG task index {task['index']} is out of range: job {task['type']!r} has "
                          f"{len(cluster[task['type']])} task(s), indexed from 0")
    return Role(task["type"], task["index"], sum(map(len, cluster.values())),
                "chief:0" if "chief" in cluster else "worker:0")


def _cluster(tf_config) -> dict[str, list[str]]:
    """``TF_CONFIG["cluster"]``, checked: jobs ``chief`` (one task at most) and ``worker``, each a list of
    distinct ``host:port`` addresses."""
    cluster = tf_config.get("cluster") if isinstance(tf_config, dict) else None
    if not isinstance(cluster, dict) or not cluster:
        raise ConfigError(f"TF_CONFIG needs a 'cluster' mapping job names to host:port lists, e.g. {EXAMPLE}")
    for job, tasks in cluster.items():
        if job not in JOBS:
            raise ConfigError(f"TF_CONFIG cluster job {job!r} is not one of {', '.join(JOBS)} "
                              "(multi_worker is synchronous data parallelism: no parameter servers)")
        if not isinstance(tasks, list) or not tasks or not all(_is_address(t) for t in tasks):
            raise ConfigError(f"TF_CONFIG cluster job {job!r} must be a non-empty list of 'host:port' "
                              f"strings; got {tasks!r}")
    if len(cluster.get("chief", [])) > 1:
        raise ConfigError(f"TF_CONFIG cluster has {len(cluster['chief'])} chief tasks; at most one")
    addresses = [a for tasks in cluster.values() for a in tasks]
    if len(set(addresses)) != len(addresses):
        raise ConfigError(f"TF_CONFIG cluster lists an address twice: {addresses}")
    return cluster


def _is_address(task) -> bool:
    host, sep, port = task.rpartition(":") if isinstance(task, str) else ("", "", "")
    return bool(host and sep and port.isdigit() and 0 < int(port) < 65536)


def _task(tf_config) -> dict:
    """``TF_CONFIG["task"]``, checked: a ``type`` (a job name) and an integer ``index``."""
    task = tf_config.get("task")
    if not isinstance(task, dict) or not isinstance(task.get("type"), str) \
            or not isinstance(task.get("index"), int) or isinstance(task.get("index"), bool):
        raise ConfigError("TF_CONFIG needs a 'task' with this worker's job 'type' and integer 'index', "
                          f"e.g. {{\"type\": \"worker\", \"index\": 0}}; got {task!r}")
    return task


@contextlib.contextmanager
def cluster_errors(task: Role | None) -> Iterator[None]:
    """A collective that fails because another worker stopped (or cannot be reached) becomes one line
    saying so and how to go on; nothing changes outside a multi-worker training (``task`` None)."""
    if task is None:
        yield
        return
    import tensorflow as tf

    try:
        yield
    except tf.errors.UnavailableError as e:
        detail = " ".join(str(e.message).split("}}")[-1].split("Additional GRPC")[0].split())[:200]
        raise SegnetError(f"multi-worker: {task.task} lost another worker of the cluster ({detail}); restart "
                          "every worker with train.resume=true to continue the run") from None


def make_strategy():
    """A ``MultiWorkerMirroredStrategy`` that Keras 3's ``model.fit`` can use (see :func:`_strategy_class`).
    It configures TensorFlow's runtime, so it must come before anything else touches TensorFlow's devices."""
    return _strategy_class()()


def _strategy_class():
    """``MultiWorkerMirroredStrategy`` whose ``reduce`` takes what Keras 3.15 hands it under a multi-worker
    strategy (keras-team/keras#20585, tensorflow/tensorflow#72388): ``fit`` reduces its first batch, an
    (image, mask) tuple, which TensorFlow's collective reduce does not take as a nest; and it averages
    every per-replica scalar metric (the loss) with ``axis=0``, which a scalar has not. Nests are reduced
    leaf by leaf, scalars across replicas (axis None): what Keras means by both."""
    import tensorflow as tf

    class KerasMultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        def reduce(self, reduce_op, value, axis):
            def one(v):
                first = v.values[0] if isinstance(v, tf.distribute.DistributedValues) else tf.convert_to_tensor(v)
                return super(KerasMultiWorkerMirroredStrategy, self).reduce(
                    reduce_op, v, None if first.shape.rank == 0 else axis)

            return tf.nest.map_structure(one, value)

    return KerasMultiWorkerMirroredStrategy


def from_chief(strategy, values) -> np.ndarray:
    """``values`` (numbers, of one shape on every worker) as the chief holds them, on every worker: a sum
    over all replicas to which only replica 0, the chief's first device, contributes. A collective: every
    worker must call it, in the same order as every other collective."""
    import tensorflow as tf

    local = tf.constant(np.asarray(values, np.float64))

    def contribution():
        first = tf.distribute.get_replica_context().replica_id_in_sync_group == 0
        return local * tf.cast(first, tf.float64)

    @tf.function  # eagerly, strategy.run warns of its overhead
    def summed():
        return strategy.reduce("SUM", strategy.run(contribution), axis=None)

    return np.asarray(summed())


def replica_mean(strategy, variables) -> None:
    """Every replica's copy of each of ``variables`` set to their mean over all replicas (one collective).

    For state that each replica updates on its own: Keras 3 creates BatchNormalization's moving statistics
    with no aggregation, so under any strategy with several replicas (GPUs, workers) each keeps its own
    and a checkpoint would hold one replica's. Their update is an exponential moving average, linear in the
    batch statistics: averaged once after an epoch they equal statistics averaged at every step (started
    alike), without a collective per variable and step."""
    import tensorflow as tf

    @tf.function
    def average():
        def replica_fn():
            means = tf.distribute.get_replica_context().all_reduce("MEAN", [tf.identity(v) for v in variables])
            for v, mean in zip(variables, means, strict=True):
                v.assign(mean)  # no aggregation: this replica's copy

        strategy.run(replica_fn)

    average()


def share_run(strategy, run_id: str | None = None, resumed: bool = False) -> tuple[str, bool]:
    """The chief's run id and whether it resumes that run, on every worker (the chief passes them; the
    others pass nothing)."""
    raw = np.zeros(_RUN_ID_BYTES + 1)
    if run_id is not None:
        encoded = run_id.encode()
        raw[0], raw[1 : 1 + len(encoded)] = float(resumed), list(encoded)
    got = from_chief(strategy, raw)
    return bytes(int(c) for c in got[1:] if c).decode(), bool(got[0])


def barrier(strategy) -> None:
    """Return when every worker has reached this point (a collective with nothing to say)."""
    from_chief(strategy, [0.0])

"""Multi-worker training (``train.strategy: multi_worker``): two workers on 127.0.0.1 train one model.

``TF_CONFIG`` is checked before any work (one line, exit 2). Two ``segnet train`` processes, a chief and a
worker, train a tiny model (and, in the slow test, are SIGKILLed mid-training and resumed): one MLflow
run, every epoch logged once, both workers end with the same weights (a spy in each process keeps its
trained model), and the validation run under the strategy is what the best checkpoint scores alone.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from segnet import paths
from segnet.errors import ConfigError
from segnet.multiworker import role
from tests.procs import (
    free_port,
    metric_history,
    run,
    run_statuses,
    segnet_env,
    tiny_overrides,
    wait_for_state,
)

EPOCH_METRICS = ("loss", "val_loss", "val_iou", "val_tgs_map", "lr", "epoch_time_s", "train_images_per_s")

# `python -m segnet train ...` plus a spy that keeps the trained model and saves its weights to argv[1].
_WORKER = """
import sys
import numpy as np
from segnet import train
from segnet.cli import main
models = []
real_run_epoch = train._run_epoch
def keep_model(fit, state, epoch):
    models.append(fit.model)
    return real_run_epoch(fit, state, epoch)
train._run_epoch = keep_model
rc = main(sys.argv[2:])
if rc == 0:
    np.savez(sys.argv[1], *[np.asarray(w) for w in models[-1].weights])
sys.exit(rc)
"""


# Two replicas (2 logical CPUs) whose copies of a batch-norm layer's moving statistics differ, as Keras 3
# leaves them after a step under any strategy; replica_mean gives both their mean.
_REPLICA_MEAN = """
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from segnet.multiworker import replica_mean
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    bn = keras.layers.BatchNormalization()
    bn.build((None, 3))
stats = [bn.moving_mean, bn.moving_variance]

@tf.function
def own_values():
    def fn():
        r = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.float32)
        for k, v in enumerate(stats):
            v.assign(tf.fill([3], 10.0 * k + r))
    strategy.run(fn)

@tf.function
def copies():
    return strategy.run(lambda: [tf.identity(v) for v in stats])

def per_replica():
    return [[np.asarray(t).tolist() for t in strategy.experimental_local_results(p)] for p in copies()]

own_values()
assert per_replica() == [[[0.0] * 3, [1.0] * 3], [[10.0] * 3, [11.0] * 3]], per_replica()
replica_mean(strategy, stats)
assert per_replica() == [[[0.5] * 3, [0.5] * 3], [[10.5] * 3, [10.5] * 3]], per_replica()
print("OK")
"""


def _tf_config(ports: list[int], index: int) -> str:
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def _ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        if (p := free_port()) not in ports:
            ports.append(p)
    return ports


def _start_workers(tmp_path, args: list[str], tag: str) -> list[subprocess.Popen]:
    ports = _ports(2)
    return [subprocess.Popen([sys.executable, "-c", _WORKER, str(tmp_path / f"{tag}-weights{i}.npz"), "train", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=paths.ROOT,
                             env=segnet_env(tmp_path, TF_CONFIG=_tf_config(ports, i)))
            for i in range(2)]


def _finish(procs: list[subprocess.Popen]) -> list[str]:
    try:
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-4000:]
    return outs


@pytest.mark.parametrize("value, says", [
    (None, "needs the TF_CONFIG environment variable"),
    ("{not json", "not valid JSON"),
    ('{"task": {"type": "worker", "index": 0}}', "needs a 'cluster'"),
    ('{"cluster": {"ps": ["a:1"]}, "task": {"type": "ps", "index": 0}}', "job 'ps' is not one of chief, worker"),
    ('{"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}', "'host:port' strings"),
    ('{"cluster": {"worker": ["a:1", "a:1"]}, "task": {"type": "worker", "index": 0}}', "an address twice"),
    ('{"cluster": {"worker": ["a:1"]}}', "needs a 'task'"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}', "not a job of its cluster"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}', "index 1 is out of range"),
    ('{"cluster": {"chief": ["a:1", "b:1"]}, "task": {"type": "chief", "index": 0}}', "at most one"),
])
def test_a_missing_or_malformed_tf_config_is_one_line(value, says):
    with pytest.raises(ConfigError, match=says) as err:
        role({} if value is None else {"TF_CONFIG": value})
    assert "\n" not in str(err.value)


def test_the_chief_is_task_chief_else_worker_0():
    two = {"cluster": {"worker": ["a:1", "b:1"]}}
    assert role({"TF_CONFIG": json.dumps({**two, "task": {"type": "worker", "index": 0}})}).chief
    w1 = role({"TF_CONFIG": json.dumps({**two, "task": {"type": "worker", "index": 1}})})
    assert not w1.chief and w1.workers == 2 and w1.task == "worker:1"
    with_chief = {"cluster": {"chief": ["c:1"], "worker": ["a:1"]}}
    assert not role({"TF_CONFIG": json.dumps({**with_chief, "task": {"type": "worker", "index": 0}})}).chief
    c = role({"TF_CONFIG": json.dumps({**with_chief, "task": {"type": "chief", "index": 0}})})
    assert c.chief and c.workers == 2


def test_a_lost_worker_is_one_line_saying_how_to_go_on():
    import tensorflow as tf

    from segnet.errors import SegnetError
    from segnet.multiworker import Role, cluster_errors

    lost = tf.errors.UnavailableError(None, None, "{{function_node __wrapped__CollectiveReduceV2}} Collective ops "
                                      "is aborted by: Socket closed\nAdditional GRPC error information from ...")
    with pytest.raises(SegnetError) as err, cluster_errors(Role("worker", 1, 2, "worker:0")):
        raise lost
    assert str(err.value) == ("multi-worker: worker:1 lost another worker of the cluster (Collective ops is "
                              "aborted by: Socket closed); restart every worker with train.resume=true to "
                              "continue the run")
    with pytest.raises(tf.errors.UnavailableError), cluster_errors(None):  # not a multi-worker training
        raise lost


def test_a_worker_that_cannot_see_the_chiefs_runs_folder_says_so(tmp_path):
    from segnet.errors import SegnetError
    from segnet.train import _chief_state

    with pytest.raises(SegnetError, match="SEGNET_RUNS_DIR on a shared file system") as err:
        _chief_state(tmp_path / "runs" / "0123abcd")
    assert str(tmp_path / "runs" / "0123abcd" / "state.json") in str(err.value)


def test_train_without_tf_config_fails_before_any_run(tiny_synth, tmp_path):
    env = segnet_env(tmp_path)
    env.pop("TF_CONFIG", None)
    out = run(["train", *tiny_overrides(tiny_synth), "train.strategy=multi_worker"], tmp_path, env=env)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    err = [line for line in out.stderr.splitlines() if line.startswith("segnet:")]
    assert len(err) == 1 and "TF_CONFIG" in err[0] and "Traceback" not in out.stderr, out.stderr
    assert not run_statuses(tmp_path)


def test_replica_mean_gives_every_replica_the_mean(tmp_path):
    out = subprocess.run([sys.executable, "-c", _REPLICA_MEAN], capture_output=True, text=True, cwd=paths.ROOT,
                         env=segnet_env(tmp_path), timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout[-2000:] + out.stderr[-3000:]


def test_two_workers_train_one_model(tiny_synth, tmp_path):
    args = [*tiny_overrides(tiny_synth, epochs=2), "train.strategy=multi_worker"]
    outs = _finish(_start_workers(tmp_path, args, "fresh"))
    run_id = next(line.split()[1] for line in outs[0].splitlines() if line.startswith("run_id: "))
    _one_model_in_one_run(tmp_path, run_id, outs, args, "fresh")


@pytest.mark.slow  # two pairs of trainings: about twice the test above
def test_two_workers_killed_mid_run_resume_it(tiny_synth, tmp_path):
    args = [*tiny_overrides(tiny_synth, epochs=2), "train.strategy=multi_worker"]
    first = _start_workers(tmp_path, args, "first")
    try:
        state = wait_for_state(first[0], tmp_path / "runs", 0)  # the chief logged epoch 1: kill both
    finally:
        for p in first:
            p.kill()
            p.communicate()
    run_id = state.parent.name
    assert run_statuses(tmp_path) == {run_id: "RUNNING"}
    outs = _finish(_start_workers(tmp_path, [*args, "train.resume=true"], "resumed"))
    assert f"resume: run {run_id}" in outs[0]  # both workers restored the chief's checkpoint of epoch 1
    _one_model_in_one_run(tmp_path, run_id, outs, args, "resumed")


def _one_model_in_one_run(tmp_path, run_id: str, outs: list[str], args: list[str], tag: str) -> None:
    """One MLflow run, finished by the chief alone, every epoch logged once; both workers name it and
    end with the same weights; its validation is what its best checkpoint scores without a strategy."""
    for out in outs:
        assert f"run_id: {run_id}" in out, out[-3000:]
    assert run_statuses(tmp_path) == {run_id: "FINISHED"}
    for key in EPOCH_METRICS:
        assert [step for step, _ in metric_history(tmp_path, run_id, key)] == [0, 1], key
    chief, worker = (np.load(tmp_path / f"{tag}-weights{i}.npz") for i in range(2))
    assert len(chief.files) == len(worker.files) > 0
    for k in chief.files:
        np.testing.assert_array_equal(chief[k], worker[k], err_msg=k)
    _validation_is_the_plain_models(tmp_path, run_id, args)


def _validation_is_the_plain_models(tmp_path, run_id: str, args: list[str]) -> None:
    """The per-epoch validation ran under the strategy (each worker predicted a share of the images, with
    the batch-norm statistics averaged over the workers): the chief's best checkpoint, loaded here without
    any strategy, scores what was logged for its epoch."""
    import keras

    from segnet.config import load_config
    from segnet.data import load_dataset
    from segnet.data.folds import split
    from segnet.data.pipeline import to_network
    from segnet.losses import get_loss
    from segnet.models import register_with_keras
    from segnet.train import validation_scores

    cfg = load_config(None, args)
    data = load_dataset(cfg)
    _, val_idx = split(data.ids, data.masks, n_folds=cfg.data.n_folds, fold=cfg.data.fold, seed=cfg.data.fold_seed)
    register_with_keras()
    best = keras.models.load_model(tmp_path / "runs" / run_id / "best.keras")
    scores = validation_scores(cfg, best, to_network(data.images[val_idx], cfg.data.size, cfg.data.resize_mode),
                               data.masks[val_idx], get_loss(cfg.train.loss))
    epoch = int(metric_history(tmp_path, run_id, "best_epoch")[0][1]) - 1
    for key in ("val_loss", "val_iou", "val_tgs_map"):
        assert scores[key] == pytest.approx(dict(metric_history(tmp_path, run_id, key))[epoch], rel=1e-5), key

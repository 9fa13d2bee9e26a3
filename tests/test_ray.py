"""`segnet ablate|cv --backend ray` (segnet.cluster): each child a Ray task running the child's `segnet train`
command, all logging to one real `mlflow server` on a free loopback port.

A tiny 2-variant ablation on a Ray cluster of 2 CPUs (`ray start --head`, joined with `--address`) ends
with every child FINISHED under its parent and the summary the local code builds from the same children; a
child whose Ray worker dies ends KILLED and is named in the error, a SIGTERM to the parent (Ray started
here: no `--address`) cancels the task and its child ends KILLED, and the rerun resumes that same run to
the end. The store check, the cluster config keys and the option errors are checked without training.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from segnet.children import child_command, portable_argv
from segnet.cli import main as cli_main
from segnet.cluster import check_store, local_ips, unreachable_store
from segnet.config import load_config
from segnet.errors import ConfigError, SegnetError

from .procs import (
    children_of,
    mlflow_server,
    ok,
    one_error,
    ray_head,
    run,
    segnet_env,
    spawn,
    tiny_overrides,
    wait_for_state,
)

VARIANTS = {"transposed_k3": {"model.decoder": "transposed", "decoder.kernel_size": 3},
            "upsampling_nearest": {"model.decoder": "upsampling"}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real MLflow server (sqlite store, artifacts proxied to a folder: the store Ray workers share)."""
    tmp = tmp_path_factory.mktemp("ray_mlflow")
    with mlflow_server(f"sqlite:///{tmp / 'mlflow.db'}", "--artifacts-destination", str(tmp / "artifacts"),
                       "--workers", "1", cwd=tmp) as base:
        yield base


def _env(work: Path, server: str) -> dict:
    return segnet_env(work, MLFLOW_TRACKING_URI=server, RAY_AUTH_MODE="token")


def _ablation_file(work: Path, data: Path, variants: dict, epochs: int) -> Path:
    f = work / "ablation.yaml"
    f.write_text(yaml.safe_dump({"seeds": 1, "bootstrap": 200, "variants": variants,
                                 "overrides": tiny_overrides(data, epochs=epochs)}))
    return f


def _children(client: MlflowClient, parent: str) -> list:
    exp = client.get_run(parent).info.experiment_id
    return client.search_runs([exp], f"tags.`segnet.ablation_id` = '{parent}'")


# -- a tiny ablation on a 2-CPU Ray cluster ---------------------------------------------------------------
def test_ray_ablation_ends_like_the_local_one(tiny_synth, server, tmp_path):
    """Every child FINISHED and nested under the parent; the summary.csv the Ray run logged, and the table it
    printed, are those the local code (``ablate.summarize``: what `ablate` and `ablate --summarize` end with)
    builds from the same children."""
    from segnet.ablate import plan, summarize, summary_markdown

    f = _ablation_file(tmp_path, tiny_synth, VARIANTS, epochs=1)
    with ray_head(cpus=2) as address:
        out = ok(run(["ablate", "--config", str(f), "--backend", "ray", "--address", address], tmp_path,
                      env=_env(tmp_path, server)))
    parent = re.search(r"^ablation_run_id: ([0-9a-f]{32})", out, re.M).group(1)
    assert "ablate: 2 children sent to the Ray cluster (2 CPUs, 0 GPUs in all)" in out
    assert re.search(r"^ablate: \[1/2\] start \S+ s42 on [0-9.]+$", out, re.M), out[-3000:]
    assert "[transposed_k3 s42] epoch   1/1" in out and "[upsampling_nearest s42] run_id: " in out
    assert re.search(r"^ablate: \S+ s42 finished; 2/2 done, 0 running, 0 pending, [0-9.]+ min elapsed", out, re.M)

    client = MlflowClient(server)
    kids = _children(client, parent)
    assert sorted(r.data.tags["segnet.variant"] for r in kids) == sorted(VARIANTS)
    assert {(r.info.status, r.data.tags["mlflow.parentRunId"]) for r in kids} == {("FINISHED", parent)}
    assert client.get_run(parent).info.status == "FINISHED"
    got = pd.read_csv(client.download_artifacts(parent, "summary.csv", str(tmp_path)))
    assert list(got.variant) == list(VARIANTS) and list(got.replicates) == [1, 1]
    want = summarize(server, plan(f), parent)[0]
    pd.testing.assert_frame_equal(got, want.reset_index(drop=True), check_dtype=False)

    table = [ln for ln in out.splitlines() if ln.startswith("| ")]
    assert len(table) == 3 and table == [ln for ln in summary_markdown(want).splitlines() if ln.startswith("| ")]


# -- a worker that dies, a stop, a resume -------------------------------------------------------------------
class _Output:
    """A spawned process's output, read as it comes."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.lines = proc, []
        self.reader = threading.Thread(target=lambda: self.lines.extend(proc.stdout), daemon=True)
        self.reader.start()

    def wait_for(self, pattern: str, timeout: float = 300) -> None:
        deadline = time.time() + timeout
        while not any(re.search(pattern, ln) for ln in self.lines):
            assert self.proc.poll() is None, f"exited {self.proc.returncode}:\n{''.join(self.lines)[-3000:]}"
            assert time.time() < deadline, f"no line matching {pattern!r}:\n{''.join(self.lines)[-3000:]}"
            time.sleep(0.1)

    def end(self, timeout: float = 120) -> tuple[int, str, float]:
        t0 = time.time()
        rc = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return rc, "".join(self.lines), time.time() - t0


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _training_process(pid: int) -> int:
    """The `segnet train` process among the descendants of ``pid`` (its parent is the Ray worker)."""
    for p in children_of(pid):
        try:
            argv = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"segnet" in argv and b"train" in argv:
            return p
    raise AssertionError("no segnet train process under the ablation")


def _processes_naming(text: str) -> list[int]:
    """The processes whose command line contains ``text``."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                if text.encode() in (d / "cmdline").read_bytes():
                    found.append(int(d.name))
    return found


@pytest.mark.slow  # ~100 s: a Ray worker killed mid-training, then a stop, then a rerun (make test-all)
def test_dead_worker_and_stop_end_the_child_killed_and_the_rerun_resumes_it(tiny_synth, server, tmp_path):
    """1. The child's Ray worker is SIGKILLed mid-training: exit 2 naming the child, its run KILLED.
    2. The rerun resumes that run; SIGTERM to the parent cancels the task: exit 143 soon, the run KILLED.
    3. The rerun resumes the same run to FINISHED: one child run in all."""
    f = _ablation_file(tmp_path, tiny_synth, {"transposed_k3": VARIANTS["transposed_k3"]}, epochs=5)
    argv, env = ["ablate", "--config", str(f), "--backend", "ray"], _env(tmp_path, server)
    client = MlflowClient(server)

    first = _Output(spawn(argv, tmp_path, env=env))
    state = wait_for_state(first.proc, tmp_path / "runs", epoch=0)
    child_id = state.parent.name
    trainer = _training_process(first.proc.pid)
    worker = int(Path(f"/proc/{trainer}/stat").read_text().split(")")[-1].split()[1])
    assert Path(f"/proc/{worker}/cmdline").read_bytes().startswith(b"ray::segnet transposed_k3 s42")
    os.kill(worker, signal.SIGKILL)
    rc, out, _ = first.end()
    assert rc == 2, out[-3000:]
    assert re.search(r"^segnet: error: 1 children failed: transposed_k3 s42: its Ray task failed "
                     r"\(WorkerCrashedError", out, re.M), out[-3000:]
    assert client.get_run(child_id).info.status == "KILLED"

    second = _Output(spawn(argv, tmp_path, env=env))
    second.wait_for(rf"^\[transposed_k3 s42\] resume: run {child_id} from epoch 2 of 5")
    second.proc.send_signal(signal.SIGTERM)
    started = children_of(second.proc.pid)  # the local Ray cluster (gcs, raylet, workers), the child: all stopping
    assert len(started) >= 3, started
    rc, out, took = second.end()
    assert rc == 128 + signal.SIGTERM and took < 90, (took, out[-3000:])
    assert "ablate: stopping 1 running children (0 not started)" in out
    assert client.get_run(child_id).info.status == "KILLED"
    parent = re.search(r"^ablation_run_id: ([0-9a-f]{32})", out, re.M).group(1)
    assert not _processes_naming(parent)  # no process names the stopped ablation any more
    deadline = time.monotonic() + 20  # ray.shutdown reaps its cluster's processes within seconds
    while (left := [p for p in started if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, [Path(f"/proc/{p}/cmdline").read_bytes()[:80] for p in left]  # nor any Ray process it started

    third = ok(run(argv, tmp_path, env=env))
    assert f"[transposed_k3 s42] resume: run {child_id} from epoch" in third
    assert re.search(rf"^ablation_run_id: {parent}", third, re.M)
    kids = _children(client, parent)
    assert [(r.info.run_id, r.info.status) for r in kids] == [(child_id, "FINISHED")]
    assert client.get_run(parent).info.status == "FINISHED"


# -- refused before any work --------------------------------------------------------------------------------
@pytest.mark.parametrize("uri, address, nodes, refused", [
    ("sqlite:///mlflow.db", "ray://10.1.2.3:10001", ["10.1.2.3"], "a file on this machine"),
    ("/abs/mlruns", "10.1.2.3:6379", ["10.1.2.3", "127.0.0.1"], "a file on this machine"),
    ("file:///abs/mlruns", "auto", ["127.0.0.1", "10.1.2.4"], "a file on this machine"),
    ("http://127.0.0.1:5000", "ray://head:10001", ["10.1.2.3"], "loopback address (127.0.0.1)"),
    ("http://localhost:5000", "ray://head:10001", ["10.1.2.3"], "loopback address (localhost)"),
    ("postgresql://u:p@[::1]:5432/mlflow", "ray://head:10001", ["10.1.2.3"], "loopback address (::1)"),
    ("postgresql://u@/mlflow?host=/var/run/postgresql", "auto", ["10.1.2.3"], "no host in the URI"),
    ("http://tracking.internal:5000", "ray://head:10001", ["10.1.2.3"], None),  # a host they can reach
    ("sqlite:///mlflow.db", None, ["10.1.2.3"], None),  # a cluster Ray starts here: this machine's files
    ("sqlite:///mlflow.db", "auto", ["127.0.0.1"], None),  # every node is this machine
])
def test_store_the_workers_cannot_reach_is_refused(uri, address, nodes, refused):
    if refused is None:
        check_store(uri, address, nodes, here={"127.0.0.1", "::1"})
        return
    with pytest.raises(SegnetError) as e:
        check_store(uri, address, nodes, here={"127.0.0.1", "::1"})
    msg = str(e.value)
    assert "\n" not in msg and refused in msg and "10.1.2." in msg
    assert "set MLFLOW_TRACKING_URI=http://<a host they reach>:5000" in msg


def test_this_machines_addresses_are_local():
    assert {"127.0.0.1", "::1"} <= local_ips()
    assert unreachable_store("databricks") is None and unreachable_store("http://10.0.0.2:5000") is None


def test_option_errors_are_one_line(tiny_synth, tmp_path, monkeypatch, capsys):
    f = _ablation_file(tmp_path, tiny_synth, VARIANTS, epochs=1)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    for argv, what in [
        (["ablate", "--config", str(f), "--address", "auto"], "--address names a Ray cluster; add --backend ray"),
        (["ablate", "--config", str(f), "--backend", "ray", "--jobs", "2"], "--jobs is the local backend's"),
        (["ablate", "--config", str(f), "--plan", "--backend", "ray"], "--plan trains nothing"),
        (["cv", "--summarize", "x", "--address", "auto"], "drop --address"),
        (["cv", "--backend", "ray", "data.dir=" + str(tiny_synth), "cluster.gpus_per_child=-1"],
         "config key 'cluster.gpus_per_child' must be >= 0"),
    ]:
        assert cli_main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and what in err[0], (argv, err)
    assert not (tmp_path / "mlflow.db").exists()  # nothing was created


def test_child_no_node_can_hold_is_refused_before_any_run(tiny_synth, tmp_path):
    """On the Ray cluster started here (no --address: every CPU of this machine) a child asking more CPUs
    than the machine has could never start: one line, exit 2, no run created."""
    f = _ablation_file(tmp_path, tiny_synth, VARIANTS, epochs=1)
    out = run(["ablate", "--config", str(f), "--backend", "ray", "cluster.cpus_per_child=1024"], tmp_path)
    assert re.fullmatch(r"segnet: error: transposed_k3 s42 asks cluster\.cpus_per_child=1024, "
                        r"cluster\.gpus_per_child=0, more than any node of the Ray cluster has \([0-9.]+: "
                        r"\d+ CPUs, \d+ GPUs\)", one_error(out)), out.stderr[-2000:]
    assert not (tmp_path / "mlflow.db").exists()


def test_without_ray_installed_one_line_says_how(tiny_synth, tmp_path):
    f = _ablation_file(tmp_path, tiny_synth, VARIANTS, epochs=1)
    code = ("import sys; sys.modules['ray'] = None; from segnet.cli import main; "
            f"sys.exit(main(['ablate', '--config', {str(f)!r}, '--backend', 'ray']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=segnet_env(tmp_path),
                         timeout=300)
    assert one_error(out) == "segnet: error: the ray backend needs Ray: pip install 'segnet[ray]'"
    assert not (tmp_path / "mlflow.db").exists()


# -- the cluster config keys ----------------------------------------------------------------------------
def test_cluster_keys_default_validate_and_leave_the_child_unchanged(tiny_synth, tmp_path):
    cfg = load_config()
    assert (cfg.cluster.cpus_per_child, cfg.cluster.gpus_per_child) == (1.0, 0.0)
    assert load_config(None, ["cluster.cpus_per_child=0.5", "cluster.gpus_per_child=2"]).cluster.gpus_per_child == 2
    assert load_config(None, ["cluster.cpus_per_child=0", "cluster.gpus_per_child=1"]).cluster.cpus_per_child == 0
    for override, msg in [("cluster.cpus_per_child=-1", "config key 'cluster.cpus_per_child' must be >= 0"),
                          ("cluster.gpus_per_child=.inf", "config key 'cluster.gpus_per_child' must be a finite number"),
                          ("cluster.gpus_per_child=nan", "config key 'cluster.gpus_per_child' must be a finite number"),
                          ("cluster.cpus_per_child=two", "config key 'cluster.cpus_per_child' must be a number"),
                          ("cluster.cpus_per_child=1.5", "'cluster.cpus_per_child' must be a fraction up to 1 or a whole"),
                          ("cluster.cpus_per_child=0", "a child that asks for nothing is not paced by Ray"),
                          ("cluster.cpu=1", "unknown config key 'cluster.cpu'")]:
        with pytest.raises(ConfigError, match=re.escape(msg)):
            load_config(None, [override])
    # What a child asks of the cluster is no part of what it is: same hash, so it resumes on either backend.
    assert load_config(None, ["cluster.cpus_per_child=4"]).hash() == cfg.hash()

    from segnet.ablate import plan

    p = plan(_ablation_file(tmp_path, tiny_synth, VARIANTS, epochs=1))
    c = p.children[0]
    assert portable_argv(c, p.profile, "P", "segnet.ablation_id")[1:] == child_command(c, p.profile, "P")[1:]


def test_sigterm_while_ray_init_has_its_own_handler_ends_like_any_sigterm(tmp_path, monkeypatch):
    """ray.init puts a handler of its own in place (`sys.exit(signum)`, exit 15); a SIGTERM that lands then
    becomes segnet's Terminated (exit 143, runs end KILLED), the half-started cluster is shut down, and
    segnet's handler is back in place."""
    import types

    from segnet import errors
    from segnet.cluster import RayRunner
    from segnet.errors import Terminated, raise_on_sigterm

    monkeypatch.setattr(errors, "_stop_signal", None)  # the process's first stop signal: this test's own
    calls = []

    def init(**kwargs):  # what ray.init does on the driver: its handler, then the signal arrives
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        calls.append("init returned")

    fake = types.SimpleNamespace(init=init, shutdown=lambda: calls.append("shutdown"))
    monkeypatch.setitem(sys.modules, "ray", fake)
    before = signal.signal(signal.SIGTERM, raise_on_sigterm)
    try:
        with pytest.raises(Terminated):
            RayRunner.connect(None, f"sqlite:///{tmp_path / 'mlflow.db'}")
        assert calls == ["shutdown"]
        assert signal.getsignal(signal.SIGTERM) is raise_on_sigterm
    finally:
        signal.signal(signal.SIGTERM, before)

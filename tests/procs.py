"""Run segnet the way users do: `python -m segnet ...` as a separate process, from a fresh interpreter.

Every process gets its own tracking store and runs folder under the test's tmp_path, never the
checkout's ``mlflow.db`` or ``runs/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from segnet import paths


def tiny_overrides(data_dir: Path, epochs: int = 2) -> list[str]:
    """A model and data small enough that an epoch takes about a second on a busy 2-core machine."""
    return [f"data.dir={data_dir}", "data.size=64", "data.resize_mode=resize", "data.limit=40", "data.n_folds=4",
            "model.filters=4", "model.depth=3", f"train.epochs={epochs}", "train.batch_size=8",
            "train.early_stopping=0", "eval.overlays=2", "tracking.experiment=test", "tracking.log_model=false"]


def store_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def segnet_env(tmp_path: Path, **extra: str) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "SEGNET_RUNS_DIR": str(tmp_path / "runs"),
           "MLFLOW_TRACKING_URI": store_uri(tmp_path), "NO_ALBUMENTATIONS_UPDATE": "1"}
    env.pop("SEGNET_PARENT_PID", None)
    env.update(extra)
    return env


def _interactive_signals() -> None:
    # A shell without job control starts background commands with SIGINT ignored, and Python installs
    # no KeyboardInterrupt handler for an ignored SIGINT: give the child the default a terminal gives.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def spawn(args: list[str], tmp_path: Path, env: dict | None = None, new_group: bool = False) -> subprocess.Popen:
    """``python -m segnet *args`` in the background, output captured (stdout and stderr together)."""
    def pre() -> None:
        _interactive_signals()
        if new_group:
            os.setpgid(0, 0)

    return subprocess.Popen([sys.executable, "-m", "segnet", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env or segnet_env(tmp_path), cwd=paths.ROOT,
                            preexec_fn=pre)


def run(args: list[str], tmp_path: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "segnet", *args], capture_output=True, text=True,
                          env=env or segnet_env(tmp_path), cwd=paths.ROOT, timeout=timeout)


def run_at_once(argvs: list[list[str]], tmp_path: Path, env: dict | None = None,
                timeout: float = 600) -> list[subprocess.CompletedProcess]:
    """Independent commands (each as ``run``) started together, their results in order: a process spends
    its first seconds importing TensorFlow on one core, so two at once take little more than one."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(argvs)) as pool:
        futures = [pool.submit(run, argv, tmp_path, env, timeout) for argv in argvs]
        return [f.result() for f in futures]


def wait_for_state(proc: subprocess.Popen | None, runs_dir: Path, epoch: int, timeout: float = 300,
                   exact: bool = False) -> Path:
    """The first run folder whose resume state reached ``epoch`` (-1: the state written before epoch 1)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        for state in runs_dir.glob("*/state.json"):
            try:
                got = json.loads(state.read_text())["epoch"]
            except (json.JSONDecodeError, OSError, KeyError):
                continue
            if got >= epoch:
                assert not exact or got == epoch, f"state already at epoch {got}, wanted {epoch}"
                return state
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} early:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.02)
    raise AssertionError(f"no state reached epoch {epoch} in {timeout} s")


def run_statuses(tmp_path: Path) -> dict[str, str]:
    """run id -> status, straight from the sqlite file (no MLflow involved)."""
    db = tmp_path / "mlflow.db"
    if not db.exists():
        return {}
    with sqlite3.connect(db) as con:
        if not con.execute("select name from sqlite_master where name='runs'").fetchone():
            return {}
        return dict(con.execute("select run_uuid, status from runs").fetchall())


def metric_history(tmp_path: Path, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of every logged value of a metric, in step order, duplicates included."""
    with sqlite3.connect(tmp_path / "mlflow.db") as con:
        return con.execute("select step, value from metrics where run_uuid=? and key=? order by step, timestamp",
                           (run_id, key)).fetchall()


def pids_alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        try:  # a zombie is dead for our purposes
            if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
                continue
        except OSError:
            continue
        alive.append(pid)
    return alive


def children_of(pid: int) -> list[int]:
    """Every descendant process of ``pid`` (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except OSError:
            continue
        for t in tasks:
            try:
                kids = [int(k) for k in (t / "children").read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def free_port() -> int:
    """A loopback port nobody listens on now (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rest_get(base: str, endpoint: str, **params) -> dict:
    url = f"{base}{endpoint}?{urllib.parse.urlencode(params)}" if params else f"{base}{endpoint}"
    with urllib.request.urlopen(url, timeout=30) as r:
        body = r.read()
    return json.loads(body) if body[:1] in (b"{", b"[") else {"raw": body.decode()}


def rest_post(base: str, path: str, payload: dict) -> dict:
    req = urllib.request.Request(f"{base}{path}", data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@contextlib.contextmanager
def ray_head(cpus: int = 2, timeout: float = 120) -> Iterator[str]:
    """A real Ray cluster of one node on this machine (`ray start --head --block`, ``cpus`` CPUs, no GPU, no
    dashboard, free ports, its own temp folder), in its own session; yields its address (``127.0.0.1:PORT``)
    and stops the whole process group (GCS, raylet, workers) afterwards. A driver joining it needs
    ``RAY_AUTH_MODE=token`` and the token in ~/.ray (``_ray_token_env`` makes it when there is none)."""
    import shutil
    import tempfile

    tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    port = free_port()
    ports = [str(free_port()) for _ in range(3)]
    proc = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                             "--port", str(port), "--num-cpus", str(cpus), "--num-gpus", "0",
                             "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", tmp,
                             "--ray-client-server-port", ports[0], "--dashboard-port", ports[1],
                             "--dashboard-agent-listen-port", ports[2]],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=_ray_token_env())
    try:
        deadline = time.time() + timeout
        while not list(Path(tmp).glob("session_*/logs/raylet.out")):
            assert proc.poll() is None, "ray start exited"
            assert time.time() < deadline, f"the Ray head did not start in {timeout:.0f} s"
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # `ray start` stops its processes slowly; nothing of it is kept
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


def _ray_token_env() -> dict:
    """The environment of a token-authenticated Ray head, as README "Scaling out" describes (Ray 2.60 and
    later). ``ray start --head`` with ``RAY_AUTH_MODE=token`` exits when there is no token yet (a machine
    where Ray never ran, as CI's), so the token is made first, as Ray's own message says:
    ``ray get-auth-token --generate`` (``~/.ray/auth_token``; kept if there is one)."""
    import importlib.util

    if importlib.util.find_spec("ray._private.authentication") is None:
        return dict(os.environ)
    subprocess.run([str(Path(sys.executable).parent / "ray"), "get-auth-token", "--generate"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
    return {**os.environ, "RAY_AUTH_MODE": "token"}


@contextlib.contextmanager
def mlflow_server(backend_uri: str, *extra: str, cwd: Path | None = None, timeout: float = 120) -> Iterator[str]:
    """A real `mlflow server` on a free loopback port, in its own session; yields its base URL and stops
    the whole process group (uvicorn workers) afterwards. MLflow's job runner (seven more processes that
    import MLflow, for its GenAI jobs: nothing segnet or these tests use) is left off: the tracking REST
    API, the artifact proxy and the registry are the same without it, and the server is up in half the
    time. `segnet ui` (tests/test_ui.py) starts the server exactly as users get it, job runner included."""
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
                             "--host", "127.0.0.1", "--port", str(port), *extra], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                rest_get(base, "/health")
                break
            except OSError:
                assert proc.poll() is None, "mlflow server exited"
                assert time.time() < deadline, f"mlflow server did not answer /health in {timeout:.0f} s"
                time.sleep(0.5)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def ok(out: subprocess.CompletedProcess) -> str:
    """A command that must succeed: its stdout (else the tails of its output in the failure)."""
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-3000:]
    return out.stdout


def one_error(out: subprocess.CompletedProcess) -> str:
    """A user's error: exit 2 and exactly one `segnet: error:` line on stderr (TensorFlow's start-up noise aside)."""
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("segnet: error:")]
    assert out.returncode == 2 and len(lines) == 1, out.stdout[-3000:] + out.stderr[-3000:]
    return lines[0]

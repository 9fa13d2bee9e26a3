"""``segnet ui`` as a user runs it: a separate process on a free loopback port, over a temporary store.

It must answer, print the runs-table link without MLflow's noise, stop everything it started on
SIGTERM or SIGINT, and refuse a taken port with one line. Every wait is bounded and every test kills
what it started, even when it fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.procs import free_port

START_TIMEOUT_S = 120.0  # the server starts in ~20 s on 2 busy cores; segnet ui itself gives up at 60 s
STOP_TIMEOUT_S = 15.0
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _port_free(port: int) -> bool:
    """Bind the way a server does (SO_REUSEADDR on, so connections in TIME_WAIT don't count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat fields after the command name: [state, ppid, pgrp, session, ...]."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def _all_stats() -> dict[int, list[str]]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            out[int(entry)] = st
    return out


def _descendants(root: int) -> dict[int, str]:
    """pid -> start time of every live process below ``root`` (by parent links) or in the session of
    one of its children (the server leads its own session)."""
    stats = _all_stats()
    found, frontier = set(), {root}
    while frontier:
        frontier = {p for p, st in stats.items() if int(st[1]) in frontier and p not in found}
        found |= frontier
    sessions = {p for p in found if int(stats[p][3]) == p}
    found |= {p for p, st in stats.items() if int(st[3]) in sessions}
    return {p: stats[p][19] for p in found if stats[p][0] not in ("Z", "X")}


def _still_running(procs: dict[int, str]) -> list[int]:
    """The ones that still run (same pid and start time, not a zombie waiting for init to reap it)."""
    alive = []
    for pid, start in procs.items():
        st = _stat(pid)
        if st is not None and st[19] == start and st[0] not in ("Z", "X"):
            alive.append(pid)
    return alive


def _in_sessions(sessions: set[int]) -> list[int]:
    """Live processes (not zombies) of these sessions, whenever they started."""
    return [p for p, st in _all_stats().items() if int(st[3]) in sessions and st[0] not in ("Z", "X")]


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("SEGNET_PARENT_PID", None)
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", SEGNET_RUNS_DIR=str(tmp_path / "runs"),
               PYTHONUNBUFFERED="1")
    return env


def _segnet_ui(tmp_path: Path, port: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "segnet", "ui", "--host", "127.0.0.1", "--port", str(port), *extra],
        cwd=tmp_path, env=_env(tmp_path), stdin=subprocess.DEVNULL,
        stdout=open(tmp_path / "out.txt", "wb"), stderr=open(tmp_path / "err.txt", "wb"),
        start_new_session=True,  # its own group: a SIGINT to it does not reach pytest
    )


def _health(port: int) -> int | None:
    try:
        with _OPENER.open(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            return r.status
    except OSError:
        return None


def _wait(cond, timeout: float, step: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


@contextlib.contextmanager
def _cleanup(proc: subprocess.Popen, started: dict[int, str]):
    """Whatever happens, kill segnet ui's group and every process seen below it."""
    try:
        yield
    finally:
        started.update(_descendants(proc.pid) if proc.poll() is None else {})
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in _still_running(started):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


_MLFLOW_NOISE = ("INFO", "Uvicorn", "uvicorn", "Registry store", "Security middleware", "Warning")


@pytest.mark.parametrize("how, verbose", [pytest.param("sigterm", False, marks=pytest.mark.slow),  # make test-all
                                          ("sigint_to_group", True)])
def test_ui_serves_then_stops_everything(tmp_path, how, verbose):
    port = free_port()
    proc = _segnet_ui(tmp_path, port, *(["--verbose"] if verbose else []))
    started: dict[int, str] = {}
    with _cleanup(proc, started):
        out = tmp_path / "out.txt"
        ready = _wait(lambda: proc.poll() is not None or "stop:" in out.read_text(), START_TIMEOUT_S)
        stdout, stderr = out.read_text(), (tmp_path / "err.txt").read_text()
        assert ready and proc.poll() is None, f"not ready (rc={proc.poll()}):\n{stdout}\n{stderr}"
        assert _health(port) == 200
        assert f"http://127.0.0.1:{port}/#/experiments/" in stdout and "/runs" in stdout, stdout
        assert f"kill {proc.pid}" in stdout, stdout
        if verbose:  # MLflow's own log on the terminal, the link as well
            assert "mlflow-ui-" not in stdout and "Uvicorn" in stdout + stderr, f"{stdout}\n{stderr}"
        else:  # MLflow's own log kept in the file named, none of it on the terminal
            log = re.search(r"server log: (\S+mlflow-ui-\d+\.log)\)", stdout)
            assert log and "Uvicorn" in Path(log.group(1)).read_text(), stdout
            for noise in _MLFLOW_NOISE:
                assert noise not in stdout + stderr, f"{noise!r} in output:\n{stdout}\n{stderr}"
        started.update(_descendants(proc.pid))
        assert len(started) >= 3, started  # mlflow server, uvicorn, its workers, the job runner...
        # the sessions segnet ui and its server lead: a process started in them after this look counts too
        sessions = {int(st[3]) for p in started if (st := _stat(p))} - {os.getsid(0)}

        t0 = time.monotonic()
        if how == "sigterm":
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(os.getpgid(proc.pid), signal.SIGINT)
        rc = proc.wait(timeout=STOP_TIMEOUT_S)
        assert _wait(lambda: not _still_running(started) and not _in_sessions(sessions),
                     STOP_TIMEOUT_S - (time.monotonic() - t0)), \
            f"left running: {_still_running(started)}, in its sessions: {_in_sessions(sessions)}"
        elapsed = time.monotonic() - t0
        assert rc in (0, 128 + signal.SIGTERM, 128 + signal.SIGINT), rc
        assert _port_free(port)
        assert elapsed < STOP_TIMEOUT_S
        assert "Traceback" not in (tmp_path / "err.txt").read_text()


def test_ui_taken_port_is_one_line_exit_2(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "segnet", "ui", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=120,
        )
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("segnet: error: ") and f"127.0.0.1:{port}" in lines[0], lines[0]
    assert "--port" in lines[0] and "PORT=" in lines[0], lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""

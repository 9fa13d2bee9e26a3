"""``segnet ui``: serve the MLflow UI over the tracking store and stop everything it started.

The server (``python -m mlflow server``: uvicorn, its workers, the job runner and its huey consumers)
runs in its own session, so one ``killpg`` reaches every process of it. SIGINT (Ctrl-C) or SIGTERM
to ``segnet ui`` sends SIGTERM to that group, waits a few seconds and SIGKILLs whatever remains; on
Linux a small watchdog at the head of the group does the same if ``segnet ui`` itself is killed hard
(SIGKILL). MLflow's own log goes to a file (``--verbose``: to the terminal); its tail is printed if
the server fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path

from segnet import paths, tracking
from segnet.errors import SegnetError

READY_TIMEOUT_S = 120.0  # the server must answer GET /health within this (~40 s seen on 2 busy cores)
STOP_GRACE_S = 5.0  # after SIGTERM to the server's group, SIGKILL what remains after this
POLL_S = 0.25
LOG_TAIL_LINES = 20


def serve(host: str = "127.0.0.1", port: int = 5000, experiment: str = "segnet", verbose: bool = False) -> int:
    """Serve the MLflow UI for the tracking store until SIGINT/SIGTERM; print the link to the runs table.

    With an http(s) tracking store there is nothing to serve: print that server's link and return 0.
    """
    uri = tracking.tracking_uri()
    if uri.startswith(("http://", "https://")):
        print(f"the tracking store is a server: open {tracking.runs_url(uri, tracking.experiment_id(uri, experiment))}",
              flush=True)
        return 0
    check_port_free(host, port)
    exp_id = tracking.experiment_id(uri, experiment)
    log_path = None if verbose else _log_path(port)
    print(f"MLflow UI for {uri}" + (f" (server log: {log_path})" if log_path else ""), flush=True)

    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--host", host, "--port", str(port)]
    stop = _StopSignal()
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(open(log_path, "wb")) if log_path else None
        stack.enter_context(stop.installed())
        proc = subprocess.Popen(_watched(cmd), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT if log else None,
                                start_new_session=True, preexec_fn=_hup_when_parent_dies())
        try:
            code = _supervise(proc, host, port, uri, exp_id, log_path, stop)
        finally:
            _stop_group(proc)
    if stop.signum is not None:
        print("MLflow UI stopped", flush=True)
    return code


def check_port_free(host: str, port: int) -> None:
    """Raise SegnetError if ``host:port`` cannot be bound, the way the server will bind it (SO_REUSEADDR on,
    as uvicorn does: a listening socket blocks it, connections in TIME_WAIT from a previous server do not)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except socket.gaierror as e:
        raise SegnetError(f"cannot serve the MLflow UI on {host}:{port}: unknown host {host!r} ({e.strerror})") from e
    except OSError as e:
        raise SegnetError(
            f"cannot serve the MLflow UI on {host}:{port}: {e.strerror or e} (another server uses it?); "
            f"choose another port: make ui PORT=5001, or segnet ui --port 5001") from e


def _supervise(proc: subprocess.Popen, host: str, port: int, uri: str, exp_id: str,
               log_path: Path | None, stop: _StopSignal) -> int:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not _healthy(host, port):
        if stop.signum is not None:
            return 0
        code = proc.poll()
        if code is not None:
            _print_log_tail(log_path)
            raise SegnetError(f"the MLflow server exited with code {code} before it was ready"
                              + (f" (its log: {log_path})" if log_path else ""))
        if time.monotonic() > deadline:
            _print_log_tail(log_path)
            raise SegnetError(f"the MLflow server did not answer http://{_probe_host(host)}:{port}/health within "
                              f"{READY_TIMEOUT_S:.0f} s" + (f" (its log: {log_path})" if log_path else ""))
        time.sleep(POLL_S)
    print(f"open: {tracking.runs_url(uri, exp_id, host, port)}", flush=True)
    print(f"stop: Ctrl-C, or kill {os.getpid()}", flush=True)
    while stop.signum is None:
        code = proc.poll()
        if code is not None:
            _print_log_tail(log_path)
            print(f"segnet: error: the MLflow server exited by itself with code {code}"
                  + (f" (its log: {log_path})" if log_path else ""), file=sys.stderr, flush=True)
            return code or 1
        time.sleep(POLL_S)
    return 0


class _StopSignal:
    """Records the first SIGINT/SIGTERM instead of raising, so the supervisor loop can stop the server."""

    def __init__(self):
        self.signum: int | None = None

    def _handler(self, signum, _frame):
        if self.signum is None:
            self.signum = signum

    @contextlib.contextmanager
    def installed(self):
        previous = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (it leads its own session), wait, then SIGKILL what remains."""
    pgid = proc.pid
    if not _signal_group(pgid, signal.SIGTERM):
        proc.wait()
        return
    if not _wait_group_gone(proc, pgid, STOP_GRACE_S):
        _signal_group(pgid, signal.SIGKILL)
        _wait_group_gone(proc, pgid, 2.0)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=1.0)


def _signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False


def _wait_group_gone(proc: subprocess.Popen, pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.poll()  # reap the server itself
        if not _group_alive(pgid):
            return True
        time.sleep(0.1)
    return False


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs. Zombies do not count: the server's orphaned
    grandchildren are reaped by init, which can take seconds, and they hold no port."""
    if not os.path.isdir("/proc/self"):
        return _signal_group(pgid, 0)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


# The server's direct child, in the server's process group: it runs the server and exits with its code.
# On Linux it gets SIGHUP when ``segnet ui`` dies, even by SIGKILL, and then stops the whole group
# itself (SIGTERM to the mlflow server alone would leave the job runner's huey consumers running).
# SIGTERM (from segnet ui's own stop) it leaves to the server and just waits for it.
_WATCHDOG = """
import os, signal, subprocess, sys, time
parent, grace, cmd = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
def running(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in "ZX"
    except OSError:
        return False
def orphaned(*_):
    os.killpg(0, signal.SIGTERM)
    end = time.monotonic() + grace
    while running(child.pid) and time.monotonic() < end:
        time.sleep(0.1)
    time.sleep(0.5)
    os.killpg(0, signal.SIGKILL)
signal.signal(signal.SIGTERM, lambda *_: None)
signal.signal(signal.SIGINT, lambda *_: None)
child = subprocess.Popen(cmd)
signal.signal(signal.SIGHUP, orphaned)
if os.getppid() != parent:
    orphaned()
code = child.wait()
sys.exit(code if code >= 0 else 128 - code)
"""


def _watched(cmd: list[str]) -> list[str]:
    return [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(STOP_GRACE_S), *cmd]


def _hup_when_parent_dies():
    """preexec_fn: on Linux the watchdog gets SIGHUP when ``segnet ui`` dies (PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return None

    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(1, int(signal.SIGHUP), 0, 0, 0)  # PR_SET_PDEATHSIG, kept across exec

    return preexec


def _probe_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through an http proxy


def _healthy(host: str, port: int) -> bool:
    try:
        with _OPENER.open(f"http://{_probe_host(host)}:{port}/health", timeout=2.0) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _log_path(port: int) -> Path:
    """MLflow's log, overwritten at every start: ``runs/mlflow-ui-<port>.log`` (or the temp folder)."""
    for folder in (paths.RUNS_DIR, Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"mlflow-ui-{port}.log"
            path.touch()
            return path
        except OSError:
            continue
    raise SegnetError(f"cannot write the MLflow server's log in {paths.RUNS_DIR}; use segnet ui --verbose")


def _print_log_tail(log_path: Path | None) -> None:
    if log_path is None:
        return
    try:
        with open(log_path, errors="replace") as f:
            tail = deque(f, maxlen=LOG_TAIL_LINES)
    except OSError:
        return
    if tail:
        print(f"--- last lines of {log_path} ---", file=sys.stderr)
        print("".join(tail).rstrip(), file=sys.stderr, flush=True)

"""Where an ablation's or a cv's children run: ``--backend local`` (processes of this machine, ``--jobs N``
at once: ``children.run_children``) or ``--backend ray`` (tasks of a Ray cluster, ``--address``).

``open_runner`` picks one before any work; its ``run`` trains the children ``children.train_children``
hands it and returns the failures, its ``close`` lets go of the cluster. Ray is imported here only, and
only for ``--backend ray`` (``pip install 'segnet[ray]'``).

On Ray each child is one task asking the config's ``cluster.cpus_per_child`` CPUs and
``cluster.gpus_per_child`` GPUs. The task runs the child's ``segnet train`` command, the one ``--plan``
prints (``children.portable_argv``, with the environment of ``children.environment_vars``: the store, the
runs folder, ``$TGS_DATA``), as a subprocess of its Ray worker, so resuming, the run lock and KILLED on a
stop are those of a local child; its output comes back line by line through a small actor and is printed
with the child's label, and a progress line follows each child that ends. Ctrl-C or SIGTERM cancels the
tasks: a running task sends SIGTERM to its child (whose run ends KILLED) and waits for it. A child whose
worker dies gets SIGTERM from the kernel (``cli._follow_parent``), and a run nobody is left to end is ended
KILLED by the parent (``children.end_orphans``). A cluster whose workers could not reach the tracking store
(a sqlite file, a server on 127.0.0.1, while some node is another machine) is refused before any work.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

from segnet.children import Child, environment_vars, portable_argv, progress_line, run_children
from segnet.errors import ConfigError, SegnetError

BACKENDS = ("local", "ray")
GRACE_S = 60.0  # how long a stopped child has to end its run KILLED before it is killed (as children.stop)
INSTALL_HINT = "the ray backend needs Ray: pip install 'segnet[ray]'"


def open_runner(backend: str, address: str | None, uri: str, jobs: int = 1, children: list[Child] = (),
                who: str = "ablate"):
    """The runner of ``--backend``: a ``LocalRunner`` or a connected ``RayRunner`` (its tracking store checked
    against its nodes, and ``children``'s resources against them). Errors a user can make are one line,
    before any run is created."""
    if backend not in BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1; got {jobs}")
    if backend == "local":
        if address:
            raise ConfigError("--address names a Ray cluster; add --backend ray")
        return LocalRunner(jobs)
    if jobs > 1:
        raise ConfigError("--jobs is the local backend's; on Ray, cluster.cpus_per_child and "
                          "cluster.gpus_per_child decide how many children run at once")
    runner = RayRunner.connect(address, uri)
    try:
        runner.check_fits(children, who)
    except BaseException:
        runner.close()
        raise
    return runner


class LocalRunner:
    """``--backend local``: the children as processes of this machine, ``jobs`` at once."""

    def __init__(self, jobs: int = 1):
        self.jobs = jobs

    def run(self, todo: list[Child], profile: Path | None, parent_id: str, id_tag: str, who: str) -> list[str]:
        return run_children(todo, profile, parent_id, self.jobs, id_tag, who)

    def close(self) -> None:
        pass


# -- can the workers reach the tracking store? ---------------------------------------------------------
def local_ips() -> set[str]:
    """Every address of this machine's network interfaces (loopback included)."""
    import psutil

    ips = {"127.0.0.1", "::1"}
    with contextlib.suppress(OSError):
        for addrs in psutil.net_if_addrs().values():
            ips.update(a.address.split("%")[0] for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6))
    return ips


def unreachable_store(uri: str) -> str | None:
    """Why a machine other than this one cannot reach the tracking store ``uri`` (None: it may)."""
    parsed = urlparse(uri)
    if uri.split(":")[0] in ("databricks", "databricks-uc"):  # a hosted store, named without a host
        return None
    if parsed.scheme in ("", "file", "sqlite"):
        return "a file on this machine"
    host = parsed.hostname or ""
    if not host:  # e.g. postgresql://u@/db?host=/var/run/postgresql: a socket or the default, this machine
        return "a database on this machine (no host in the URI)"
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).is_loopback or ipaddress.ip_address(host).is_unspecified:
            return f"served on this machine's loopback address ({host})"
    if host == "localhost":
        return "served on this machine's loopback address (localhost)"
    return None


def check_store(uri: str, address: str | None, node_ips, here=None) -> None:
    """Refuse (one line, exit 2) a cluster whose workers cannot reach the tracking store: ``address`` given
    (an existing cluster) and a node whose IP is not this machine's, while the store is a local file or
    a loopback server. A cluster Ray starts on this machine (no ``address``) reaches any store here."""
    if not address:
        return
    here = local_ips() if here is None else set(here)
    remote = sorted(set(node_ips) - here)
    why = unreachable_store(uri) if remote else None
    if why:
        raise SegnetError(f"--backend ray: the tracking store {uri} is {why}, which the workers on "
                          f"{', '.join(remote[:3])}{' …' if len(remote) > 3 else ''} cannot reach; set "
                          "MLFLOW_TRACKING_URI=http://<a host they reach>:5000 (an `mlflow server` whose artifact "
                          "store they share: see README, Scaling out)")


# -- what runs on a Ray worker --------------------------------------------------------------------------
class Lines:
    """A Ray actor (``num_cpus=0``) the tasks send their events to and the driver drains: ``(index,
    "start", node ip)``, ``(index, "line", text)``, ``(index, "end", exit code)``. Ray's own log
    forwarding would prefix every line with a worker's pid and fold alike lines together."""

    def __init__(self):
        self.items: list[tuple] = []

    def put(self, *item) -> None:
        self.items.append(item)

    def drain(self) -> list[tuple]:
        items, self.items = self.items, []
        return items


def train_child(index: int, argv: list[str], env: dict, lines, cpus: float, gpus: float = 0.0) -> int:
    """A Ray task: the child's `segnet train` command (``argv[0]`` is ``python``: this worker's interpreter
    runs it) as a subprocess that ends with this worker (``SEGNET_PARENT_PID``), its output sent line by
    line to ``lines``. Cancelled (``ray.cancel``: a KeyboardInterrupt here) or stopped in any other way (the
    worker's SIGTERM is a SystemExit), it sends the child SIGTERM and waits ``GRACE_S`` for it to end its
    run KILLED. Returns the child's exit code."""
    import ray

    env = {**os.environ, **env, "SEGNET_PARENT_PID": str(os.getpid()), "PYTHONUNBUFFERED": "1"}
    if cpus >= 1:  # TensorFlow's threads follow the CPUs the task holds (the command, and its hash, stay the plan's)
        env.setdefault("TF_NUM_INTRAOP_THREADS", str(int(cpus)))
    if gpus == 0:  # Ray (2.40+) no longer hides the GPUs from a task that asks for none: a CPU child sees none
        env["CUDA_VISIBLE_DEVICES"] = ""
    elif gpus < 1:  # children sharing a GPU: none may take all of its memory at start
        env.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    lines.put.remote(index, "start", ray.util.get_node_ip_address())
    proc = reader = None
    try:
        proc = subprocess.Popen([sys.executable, *argv[1:]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1, env=env)
        reader = threading.Thread(target=_send_lines, args=(proc, lines, index), daemon=True)
        reader.start()
        while proc.poll() is None:  # polled, so that a cancel's KeyboardInterrupt lands within 0.2 s
            time.sleep(0.2)
    except KeyboardInterrupt:  # ray.cancel: the child ends its run KILLED, the task reports its exit code
        if proc is None:
            raise
        _stop_child(proc)
    except BaseException:  # anything else (the worker stopping): the child must not outlive the task
        _stop_child(proc)
        raise
    if reader is not None:
        reader.join(timeout=5)
    lines.put.remote(index, "end", proc.returncode)
    return proc.returncode


def _send_lines(proc: subprocess.Popen, lines, index: int) -> None:
    for line in proc.stdout:
        if line.strip():
            lines.put.remote(index, "line", line.rstrip())


def _stop_child(proc: subprocess.Popen | None) -> None:
    """SIGTERM to a task's child, ``GRACE_S`` to end its run KILLED, then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- the driver --------------------------------------------------------------------------------------
class RayRunner:
    """``--backend ray``: the children as tasks of a Ray cluster (started here when ``address`` is None)."""

    def __init__(self, ray, address: str | None, uri: str):
        self.ray = ray
        self.address = address
        self.uri = uri

    @classmethod
    def connect(cls, address: str | None, uri: str) -> RayRunner:
        """Join the cluster at ``address`` (``auto``, ``host:port``, ``ray://host:10001``; ``$RAY_ADDRESS``
        when not given), else start one on this machine (every CPU, no dashboard); then ``check_store``."""
        try:
            import ray
        except ImportError:
            raise SegnetError(INSTALL_HINT) from None
        address = address or os.environ.get("RAY_ADDRESS") or None
        handler = signal.getsignal(signal.SIGTERM)  # ray.init puts its own in place: segnet's stays
        try:
            if address:
                ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
            else:
                ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False,
                         log_to_driver=False, logging_level=logging.WARNING, object_store_memory=2**28)
        except (ConnectionError, ValueError, RuntimeError) as e:
            what = f"join the Ray cluster at {address}" if address else "start a Ray cluster on this machine"
            why = " ".join(f"{e} {e.__cause__ or ''}".split())  # e.g. the cluster's token missing: the cause says so
            raise SegnetError(f"--backend ray: cannot {what} ({why[:400]})") from None
        except SystemExit as e:  # a SIGTERM while ray.init's own handler was in place: it exits 15
            if e.code != signal.SIGTERM or not callable(handler):
                raise
            cls(ray, address, uri).close()  # the processes of a cluster it was starting
            handler(signal.SIGTERM, None)  # segnet's (raises Terminated): the command ends as on any SIGTERM
            raise
        finally:
            if threading.current_thread() is threading.main_thread() and handler is not None:
                signal.signal(signal.SIGTERM, handler)
        runner = cls(ray, address, uri)
        try:
            check_store(uri, address, [n["ip"] for n in runner.nodes()] or [urlparse(f"//{address}").hostname])
        except BaseException:
            runner.close()
            raise
        return runner

    def nodes(self) -> list[dict]:
        """The cluster's live nodes: ``ip``, ``cpus``, ``gpus``."""
        with contextlib.suppress(Exception):  # Ray Client may not answer: then the address alone is known
            return [{"ip": n["NodeManagerAddress"], "cpus": n["Resources"].get("CPU", 0),
                     "gpus": n["Resources"].get("GPU", 0)} for n in self.ray.nodes() if n.get("Alive")]
        return []

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ray.shutdown()

    def check_fits(self, todo: list[Child], who: str) -> None:
        """A child no node could ever hold waits forever on a cluster Ray started here: refused; on a joined
        cluster an autoscaler may add the node, so it is said once and the children wait."""
        nodes = self.nodes()
        for c in todo:
            cpus, gpus = c.cfg.cluster.cpus_per_child, c.cfg.cluster.gpus_per_child
            if nodes and not any(n["cpus"] >= cpus and n["gpus"] >= gpus for n in nodes):
                have = "; ".join(f"{n['ip']}: {n['cpus']:g} CPUs, {n['gpus']:g} GPUs" for n in nodes[:3])
                msg = (f"{c.label} asks cluster.cpus_per_child={cpus:g}, cluster.gpus_per_child={gpus:g}, more "
                       f"than any node of the Ray cluster has ({have})")
                if not self.address:
                    raise ConfigError(msg)
                print(f"{who}: note: {msg}; its tasks wait for a node that fits (an autoscaler's)", flush=True)
                return

    def run(self, todo: list[Child], profile: Path | None, parent_id: str, id_tag: str, who: str) -> list[str]:
        """Every child as a Ray task (all submitted at once; the cluster's resources pace them); returns the
        failures. Ctrl-C or SIGTERM cancels them (see the module's docstring), waits for the running ones
        and re-raises."""
        ray = self.ray
        if not todo:
            return []
        env = environment_vars(self.uri)  # the store, the runs folder, $TGS_DATA: as a planned command carries them
        lines = ray.remote(num_cpus=0)(Lines).options(**self._on_this_node()).remote()
        task = ray.remote(train_child)
        refs = {}
        state = _Progress(todo, who)
        try:
            for i, c in enumerate(todo):
                opts = {"num_cpus": c.cfg.cluster.cpus_per_child, "num_gpus": c.cfg.cluster.gpus_per_child,
                        "max_retries": 0, "name": f"segnet {c.label}"}
                refs[task.options(**opts).remote(i, portable_argv(c, profile, parent_id, id_tag), env, lines,
                                                 c.cfg.cluster.cpus_per_child,
                                                 c.cfg.cluster.gpus_per_child)] = i
            total = ray.cluster_resources()
            print(f"{who}: {len(todo)} children sent to the Ray cluster ({total.get('CPU', 0):g} CPUs, "
                  f"{total.get('GPU', 0):g} GPUs in all)", flush=True)
            while refs:
                state.show(ray.get(lines.drain.remote()))
                ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0.5)
                for ref in ready:
                    state.ended(refs.pop(ref), *self._outcome(ref), lines)
        except BaseException:  # Ctrl-C, SIGTERM, or the cluster failing under the driver: cancel what is left
            running = [i for i in refs.values() if i in state.started]
            print(f"{who}: stopping {len(running)} running children ({len(refs) - len(running)} not started)",
                  flush=True)
            for ref in refs:
                ray.cancel(ref)
            deadline = time.monotonic() + GRACE_S + 30
            while refs and time.monotonic() < deadline:
                try:
                    state.show(ray.get(lines.drain.remote()))
                    ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0.5)
                except Exception:  # the cluster going away as well: nothing more to wait for
                    break
                for ref in ready:
                    refs.pop(ref)
            raise
        finally:
            with contextlib.suppress(Exception):
                state.show(ray.get(lines.drain.remote()))  # the last lines of the last child to end
            with contextlib.suppress(Exception):
                ray.kill(lines)
        return state.failures

    def _on_this_node(self) -> dict:
        """The output actor's placement: the driver's node, so that losing a worker node loses no output
        channel (not under Ray Client, whose driver is not a node of the cluster)."""
        if (self.address or "").startswith("ray://"):
            return {}
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        return {"scheduling_strategy": NodeAffinitySchedulingStrategy(self.ray.get_runtime_context().get_node_id(),
                                                                       soft=False)}

    def _outcome(self, ref) -> tuple[int | None, str]:
        """The exit code of a task's child (None: the task itself failed) and, then, why."""
        try:
            return self.ray.get(ref), ""
        except self.ray.exceptions.RayError as e:
            cause = getattr(e, "cause", None) or e  # a RayTaskError wraps what the task raised
            text = " ".join(str(cause).split())
            return None, f"{type(cause).__name__}: {text.split('. ')[0][:200]}"


class _Progress:
    """The driver's view of the tasks: their output printed with the child's label, which started (and
    where), the progress line of each that ends, the failures."""

    def __init__(self, todo: list[Child], who: str):
        self.todo, self.who = todo, who
        self.started: dict[int, str] = {}
        self.ends: dict[int, int] = {}
        self.last: dict[int, str] = {}
        self.failures: list[str] = []
        self.n_done = 0
        self.t0 = time.perf_counter()

    def show(self, items: list[tuple]) -> None:
        for index, kind, value in items:
            label = self.todo[index].label
            if kind == "start":
                self.started[index] = value
                print(f"{self.who}: [{len(self.started)}/{len(self.todo)}] start {label} on {value}", flush=True)
            elif kind == "line":
                self.last[index] = value
                print(f"[{label}] {value}", flush=True)
            else:
                self.ends[index] = value

    def ended(self, index: int, rc: int | None, why: str, lines) -> None:
        """Task ``index`` is over: its last lines (the actor may still hold them), then its progress line."""
        import ray

        deadline = time.monotonic() + 3
        while index not in self.ends and index in self.started and time.monotonic() < deadline and rc is not None:
            self.show(ray.get(lines.drain.remote()))
            time.sleep(0.05)
        self.n_done += 1
        self.started.setdefault(index, "?")
        label = self.todo[index].label
        if rc == 0:
            status = "finished"
        elif rc is None:
            status = f"FAILED (its Ray task: {why})"
            self.failures.append(f"{label}: its Ray task failed ({why})")
        else:
            status = f"FAILED (exit {rc})"
            self.failures.append(f"{label}: {self.last.get(index) or 'no output'}")
        running = len(self.started) - self.n_done
        pending = len(self.todo) - len(self.started)
        print(progress_line(self.who, label, status, self.n_done, len(self.todo), running, pending,
                            time.perf_counter() - self.t0), flush=True)

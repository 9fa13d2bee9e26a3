"""A parent MLflow run and its children, each a `segnet train` process: what `ablate` and `cv` share.

* ``find_or_create_parent``: the parent run, found again by a hash of its children's configs (tag
  ``segnet.<role>_hash``) or ``--resume ID``, else created; it is locked like a training run, so a
  second `ablate` / `cv` of the same config is refused while the first one runs.
* ``finished_children``: which children of a parent already finished (by variant, seed and fold).
* ``run_children``: the scheduler. Each child is ``python -m segnet train … --parent-run-id P --tag
  <id_tag>=P --tag segnet.seed=S --tag segnet.fold=F train.resume=true`` (``--jobs N`` at once), so a
  crash of one cannot take the others down, a finished child is skipped and an interrupted one resumes
  from its last epoch. Its output is printed line by line with its label, and a progress line follows
  each child that ends. Ctrl-C or SIGTERM stops the queue and sends SIGTERM to every running child (each
  ends its run KILLED); a SIGKILLed parent takes its children with it (``cli._follow_parent``).
  ``train_children`` hands them to another runner when given one: ``segnet.cluster`` (``--backend ray``)
  runs the same commands (``portable_argv``, ``environment_vars``) as tasks of a Ray cluster.
* ``unfinished_commands`` / ``finished_so_far`` / ``held_parent``: the same children for a scheduler of
  one's own (Slurm arrays, Kubernetes Jobs). ``--plan`` prints each unfinished child's command as a
  self-contained shell line; ``--summarize`` builds the summary from the children finished so far,
  wherever they ran.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from segnet.config import Config
from segnet.errors import ConfigError, SegnetError


@dataclass
class Child:
    """One `segnet train` process of a parent: its config and the overrides that resolve exactly to it."""

    variant: str
    seed: int
    cfg: Config
    overrides: list[str]  # what `segnet train` needs, with the profile, to resolve exactly ``cfg``
    fold: int | None = None  # None: the config's data.fold
    label: str = ""  # how its output lines and progress lines name it; default "<variant> s<seed>"

    def __post_init__(self) -> None:
        if self.fold is None:
            self.fold = self.cfg.data.fold
        if not self.label:
            self.label = f"{self.variant} s{self.seed}"
        if self.cfg.train.strategy == "multi_worker":  # refused while planning, before any run or process
            raise ConfigError(f"{self.label}: train.strategy=multi_worker trains one model on several machines "
                              f"(TF_CONFIG); an ablation's or a cv's children each train on one, so use another "
                              f"strategy and spread the children with --backend ray")

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.variant, self.seed, self.fold)


@dataclass
class ParentSpec:
    """What a parent run is: ``role`` (tag ``segnet.role``; ``segnet.<role>_hash`` holds ``hash``), and
    what a new one gets: a run name prefix, tags, params and text artifacts (file name -> text)."""

    role: str
    hash: str
    experiment: str
    name: str
    tags: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    texts: dict = field(default_factory=dict)
    resume_hint: str = "resume it with the same config and overrides"
    who: str = ""  # the prefix of its progress lines; default the role
    path_hash: str = ""  # the same with data.dir as written (``Config.path_hash``): tagged too, found by it

    def __post_init__(self) -> None:
        self.who = self.who or self.role

    @property
    def hash_tag(self) -> str:
        return f"segnet.{self.role}_hash"

    @property
    def path_tag(self) -> str:
        return f"segnet.{self.role}_path_hash"

    @property
    def hashes(self) -> list[str]:
        """The values its hash tag may hold: the hash, or the path hash (which versions before the data
        fingerprint, and hosts without the data, give)."""
        return list(dict.fromkeys(h for h in (self.hash, self.path_hash) if h))

    def filters(self) -> list[str]:
        """Each search that finds this parent: its hash tag is one of ``hashes``, or its path hash tag is ours."""
        return [f"tags.`{self.hash_tag}` = '{h}'" for h in self.hashes] + (
            [f"tags.`{self.path_tag}` = '{self.path_hash}'"] if self.path_hash else [])

    def is_mine(self, tags: dict) -> bool:
        """Whether a parent run with these tags is this one (what ``filters`` find)."""
        return tags.get(self.hash_tag) in self.hashes or bool(
            self.path_hash and tags.get(self.path_tag) == self.path_hash)


def find_or_create_parent(uri: str, spec: ParentSpec, resume: str | None):
    """The parent run (found by ``resume`` or the hash, else new) and its lock: a parent that is still
    running elsewhere on this machine is refused, not joined."""
    from segnet import locks, tracking
    from segnet.train import _check_runs_dir, run_dir

    _check_runs_dir()
    if resume:
        info = tracking.get_run(uri, resume)
        if not spec.is_mine(info.data.tags):
            raise SegnetError(f"{spec.role} run '{resume}' was made from another {spec.role} config; "
                              f"{spec.resume_hint}")
        lock = locks.lock_run(run_dir(resume), f"{spec.role} {resume}")
        return tracking.reopen_run(uri, resume), lock
    found = {r.info.run_id: r for f in spec.filters() for r in tracking.find_runs(uri, spec.experiment, f)
             if r.data.tags.get("segnet.role") == spec.role}
    found = sorted(found.values(), key=lambda r: r.info.start_time, reverse=True)  # the newest, however tagged
    if found:
        run_id = found[0].info.run_id
        lock = locks.lock_run(run_dir(run_id), f"{spec.role} {run_id} (same config hash)")
        print(f"{spec.who}: continuing {spec.role} {run_id} (same config hash)", flush=True)
        return tracking.reopen_run(uri, run_id), lock
    parent = tracking.create_run(uri, spec.experiment, f"{spec.name}-{time.strftime('%m%d-%H%M%S')}",
                                 {"segnet.role": spec.role, spec.hash_tag: spec.hash,
                                  **({spec.path_tag: spec.path_hash} if spec.path_hash else {}), **spec.tags})
    try:
        lock = locks.try_lock(run_dir(parent.run_id))
        parent.log_params(spec.params)
        for name, text in spec.texts.items():
            parent.log_text(text, name)
    except BaseException as e:
        tracking.end_after(parent, e)
        raise
    return parent, lock


def fold_of(r) -> int:
    """A child run's fold: its ``segnet.fold`` tag, else (children of older ablations) its data.fold param."""
    return int(r.data.tags.get("segnet.fold", r.data.params.get("data.fold", 0)))


def key_of(r) -> tuple[str, int, int]:
    """A child run's (variant, seed, fold), as ``Child.key``."""
    return (r.data.tags["segnet.variant"], int(r.data.tags["segnet.seed"]), fold_of(r))


def finished_runs(uri: str, experiment: str, parent_id: str, id_tag: str) -> list:
    """Every child run of the parent that finished training and its evaluation."""
    from segnet import tracking

    runs = tracking.find_runs(uri, experiment, f"tags.`{id_tag}` = '{parent_id}'", max_results=1000)
    return [r for r in runs if r.info.status == "FINISHED" and "best_val_tgs_map" in r.data.metrics]


def finished_children(uri: str, experiment: str, parent_id: str,
                      id_tag: str = "segnet.ablation_id") -> set[tuple[str, int, int]]:
    """(variant, seed, fold) of every child of the parent that finished training and its evaluation."""
    return {key_of(r) for r in finished_runs(uri, experiment, parent_id, id_tag)}


def child_command(c: Child, profile: Path | None, parent_id: str, jobs: int = 1,
                  id_tag: str = "segnet.ablation_id") -> list[str]:
    """The `segnet train` command line of one child: its config resolves exactly as planned."""
    argv = [sys.executable, "-m", "segnet", "train"]
    if profile:
        argv += ["--config", str(profile)]
    argv += ["--parent-run-id", parent_id, "--tag", f"{id_tag}={parent_id}",
             "--tag", f"segnet.seed={c.seed}", "--tag", f"segnet.fold={c.fold}"]
    over = [*c.overrides, "train.resume=true"]
    if jobs > 1 and c.cfg.train.threads == 0:
        over.append(f"train.threads={max(1, (os.cpu_count() or 1) // jobs)}")
    return argv + over


class ChildProcess:
    """One child training in its own process; its output is printed line by line with its label."""

    def __init__(self, c: Child, argv: list[str]):
        self.child = c
        self.label = c.label
        env = {**os.environ, "SEGNET_PARENT_PID": str(os.getpid()), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     bufsize=1, env=env)
        self.last_line = ""
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            line = line.rstrip()
            if line:
                self.last_line = line
                print(f"[{self.label}] {line}", flush=True)

    def done(self) -> bool:
        if self.proc.poll() is None:
            return False
        self.reader.join(timeout=5)
        return True


def run_children(todo: list[Child], profile: Path | None, parent_id: str, jobs: int,
                 id_tag: str = "segnet.ablation_id", who: str = "ablate") -> list[str]:
    """Train the children, ``jobs`` at a time, each as a `segnet train` process; returns the failures.

    Ctrl-C or SIGTERM stops the queue and sends SIGTERM to every running child (each ends its run
    KILLED), waits for them, and re-raises; a SIGKILLed parent takes its children with it (see cli).
    """
    queue = list(todo)
    running: list[ChildProcess] = []
    failures: list[str] = []
    t0, n_done = time.perf_counter(), 0
    try:
        while queue or running:
            while queue and len(running) < jobs:
                c = queue.pop(0)
                print(f"{who}: [{len(todo) - len(queue)}/{len(todo)}] start {c.label}", flush=True)
                running.append(ChildProcess(c, child_command(c, profile, parent_id, jobs, id_tag)))
            time.sleep(0.2)
            for cp in [cp for cp in running if cp.done()]:
                running.remove(cp)
                n_done += 1
                status = "finished" if cp.proc.returncode == 0 else f"FAILED (exit {cp.proc.returncode})"
                print(progress_line(who, cp.label, status, n_done, len(todo), len(running), len(queue),
                                    time.perf_counter() - t0), flush=True)
                if cp.proc.returncode != 0:
                    failures.append(f"{cp.label}: {cp.last_line or 'no output'}")
    except KeyboardInterrupt:
        print(f"{who}: stopping {len(running)} running children ({len(queue)} not started)", flush=True)
        stop(running)
        raise
    return failures


def progress_line(who: str, label: str, status: str, n_done: int, n_total: int, running: int, pending: int,
                  elapsed: float) -> str:
    """The line printed as a child ends (either backend): done / running / pending, elapsed, time left."""
    eta = elapsed / n_done * (n_total - n_done)
    return (f"{who}: {label} {status}; {n_done}/{n_total} done, {running} running, {pending} pending, "
            f"{elapsed / 60:.1f} min elapsed, ~{eta / 60:.1f} min left")


def stop(running: list[ChildProcess], grace: float = 60.0) -> None:
    """SIGTERM to each child, then wait (each ends its run KILLED); SIGKILL what outlives ``grace``."""
    for cp in running:
        with contextlib.suppress(ProcessLookupError):
            cp.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for cp in running:
        try:
            cp.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            cp.proc.kill()
            cp.proc.wait()


def end_orphans(uri: str, experiment: str, parent_id: str, id_tag: str, who: str) -> None:
    """Once every child process has ended: a child run still RUNNING has no process left to end it (one
    SIGKILLed after the grace period, say), so the parent ends it KILLED."""
    from segnet import tracking

    runs = tracking.find_runs(uri, experiment, f"tags.`{id_tag}` = '{parent_id}' and attributes.status = 'RUNNING'",
                              max_results=1000)
    for r in runs:
        tracking.Run(uri, r.info.run_id).end("KILLED")
        print(f"{who}: child run {r.info.run_id} was left RUNNING by its process; marked KILLED", flush=True)


def train_children(uri: str, experiment: str, parent_id: str, children: list[Child], profile: Path | None,
                   jobs: int, id_tag: str = "segnet.ablation_id", who: str = "ablate", runner=None) -> None:
    """Train the children that have not finished yet (finished ones are kept); raise if any fails.

    ``runner``: where they run (``segnet.cluster.open_runner``: a Ray cluster's ``run``); None: processes
    of this machine, ``jobs`` at once (``run_children``). Once every child has ended, failed or stopped,
    a child run still RUNNING has nobody left to end it (``end_orphans``)."""
    done = finished_children(uri, experiment, parent_id, id_tag)
    todo = [c for c in children if c.key not in done]
    if len(todo) < len(children):
        print(f"{who}: {len(children) - len(todo)} finished children kept, {len(todo)} to train", flush=True)
    try:
        if runner is None:
            failures = run_children(todo, profile, parent_id, jobs, id_tag, who)
        else:
            failures = runner.run(todo, profile, parent_id, id_tag, who)
    except KeyboardInterrupt:
        end_orphans(uri, experiment, parent_id, id_tag, who)
        raise
    if failures:
        end_orphans(uri, experiment, parent_id, id_tag, who)
        raise SegnetError(f"{len(failures)} children failed: " + "; ".join(failures))


# -- schedulers of one's own (Slurm arrays, Kubernetes Jobs): `--plan` and `--summarize` ----------------
PATH_KEYS = ("data.dir", "model.encoder_weights")  # overrides whose relative paths a planned command makes absolute
CARRIED_ENV = ("SEGNET_RUNS_DIR", "TGS_DATA")  # folders a planned command carries when they are set here


def unfinished_commands(uri: str, experiment: str, parent_id: str, children: list[Child], profile: Path | None,
                        id_tag: str, who: str) -> list[str]:
    """`--plan`: the shell command of every child not finished yet (an interrupted one's resumes it, as
    ``train.resume=true`` does locally); on stderr, how many and what to run once they are done."""
    done = finished_children(uri, experiment, parent_id, id_tag)
    todo = [c for c in children if c.key not in done]
    print(f"{who}: {len(children) - len(todo)} of {len(children)} children finished; {len(todo)} command(s) on "
          "stdout, one per line: run each once, in any order, anywhere segnet is installed (`python` is its "
          f"environment's) and the tracking store is reachable; then:\n"
          f"{who}:   {environment(uri)} python -m segnet {who} --summarize {parent_id}", file=sys.stderr, flush=True)
    return [f"{environment(uri)} {shell_command(c, profile, parent_id, id_tag)}" for c in todo]


def shell_command(c: Child, profile: Path | None, parent_id: str, id_tag: str) -> str:
    """``portable_argv`` as a shell line."""
    return shlex.join(portable_argv(c, profile, parent_id, id_tag))


def portable_argv(c: Child, profile: Path | None, parent_id: str, id_tag: str) -> list[str]:
    """``child_command`` as it runs anywhere (a planned line, a Ray task): ``python`` (the one segnet is
    installed in where it runs, not this interpreter's path), the profile and the ``PATH_KEYS`` overrides
    made absolute."""
    argv = child_command(c, Path(profile).absolute() if profile else None, parent_id, 1, id_tag)
    return ["python", *map(_absolute_path_override, argv[1:])]


def environment(uri: str) -> str:
    """``environment_vars`` as ``KEY=value`` words in front of a planned command."""
    return " ".join(f"{k}={shlex.quote(v)}" for k, v in environment_vars(uri).items())


def environment_vars(uri: str) -> dict[str, str]:
    """What a child run elsewhere carries: ``MLFLOW_TRACKING_URI`` always (the parent's store; the default
    one is a file of this checkout, which another machine's default is not), and the ``CARRIED_ENV`` folders
    set here (a local child would inherit them); relative paths made absolute."""
    env = {"MLFLOW_TRACKING_URI": _absolute_uri(uri)}
    env.update({k: str(Path(os.environ[k]).expanduser().absolute()) for k in CARRIED_ENV if os.environ.get(k)})
    return env


def _absolute_uri(uri: str) -> str:
    """A sqlite URI with a relative path (``sqlite:///mlflow.db``: relative to the current folder) made
    absolute; any other URI as it is."""
    path = uri.removeprefix("sqlite:///")
    if path == uri or path.startswith(("/", ":memory:")):
        return uri
    return f"sqlite:///{Path(path).absolute()}"


def _absolute_path_override(item: str) -> str:
    """``data.dir=rel/dir`` as ``data.dir=/abs/rel/dir`` when that path exists here (``imagenet`` stays)."""
    key, _, value = item.partition("=")
    if key not in PATH_KEYS or not value or Path(value).is_absolute() or not Path(value).expanduser().exists():
        return item
    return f"{key}={Path(value).expanduser().absolute()}"


def parent_run(uri: str, run_id: str, role: str):
    """The MLflow run of a parent of ``role`` (ablation, cv), refused in one line when it is another run."""
    from segnet import tracking

    info = tracking.get_run(uri, run_id)
    got = info.data.tags.get("segnet.role")
    if got != role:
        raise SegnetError(f"run '{run_id}' is not {'an' if role[0] in 'aeiou' else 'a'} {role} parent run "
                          f"(its tag segnet.role is {got or 'not set'})")
    return info


def finished_so_far(uri: str, info, experiment: str, planned: dict, id_tag: str) -> tuple[list[str], float]:
    """`--summarize`: the labels of the planned children (key -> label) that have not finished, and the
    seconds from the parent's start to the end of its last finished child (the wall time of children that
    ran elsewhere). None finished: a one-line error."""
    runs = [r for r in finished_runs(uri, experiment, info.info.run_id, id_tag) if key_of(r) in planned]
    done = {key_of(r) for r in runs}
    missing = [label for key, label in planned.items() if key not in done]
    if not runs:
        raise SegnetError(f"{info.data.tags['segnet.role']} run '{info.info.run_id}': none of its {len(planned)} "
                          f"children has finished yet ({', '.join(missing)}); nothing to summarize")
    return missing, (max(r.info.end_time for r in runs) - info.info.start_time) / 1000


@contextlib.contextmanager
def held_parent(uri: str, run_id: str, role: str) -> Iterator:
    """The parent run to log a summary to, locked meanwhile (a `segnet ablate` or `cv` of it running on this
    machine is refused in one line); its status is left as it is, for the caller to decide."""
    from segnet import locks, tracking
    from segnet.train import _check_runs_dir, run_dir

    _check_runs_dir()
    with locks.lock_run(run_dir(run_id), f"{role} {run_id}"):
        yield tracking.Run(uri, run_id)

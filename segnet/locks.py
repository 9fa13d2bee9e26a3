"""Who is working on a run: an exclusive ``flock`` the owner holds for as long as it lives.

The kernel drops a ``flock`` when its holder dies, SIGKILL included, so a lock that can be taken means
nobody is working on the run any more; no pid file can go stale. A training run and an ablation parent
each hold ``<runs dir>/<run id>/owner.lock``; resuming needs the lock, so a run that is still alive
cannot be taken over. ``store_lock`` serialises the creation of a new sqlite tracking store.

Local file locks: they see the processes of this machine (and of machines sharing the runs folder
over a file system with working ``flock``), not a run on another machine logging to the same server.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from segnet.errors import SegnetError

LOCK_NAME = "owner.lock"


class RunLock:
    """The held lock of one run folder; ``release()`` (or process death) frees it."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _owner_line() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"


def try_lock(run_dir: Path) -> RunLock | None:
    """Take the run's lock without waiting; None when a live process holds it.

    The lock file is written and locked under a temporary name, then renamed into place, so nobody
    can find an unlocked lock file of a live owner.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    if path.exists():
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        os.ftruncate(fd, 0)
        os.pwrite(fd, _owner_line().encode(), 0)
        return RunLock(path, fd)
    tmp = run_dir / f".{LOCK_NAME}.{os.getpid()}"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a fresh private file: cannot be held by anyone
    os.write(fd, _owner_line().encode())
    try:
        os.link(tmp, path)  # fails if another process placed its lock file meanwhile
    except FileExistsError:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        return try_lock(run_dir)
    tmp.unlink(missing_ok=True)
    return RunLock(path, fd)


def holder(run_dir: Path) -> str:
    """Who holds (or last held) the run's lock, for messages."""
    try:
        return (run_dir / LOCK_NAME).read_text().strip() or "another process"
    except OSError:
        return "another process"


def is_alive(run_dir: Path) -> bool:
    """A process holds the run's lock now. A folder without a lock file: nobody does."""
    path = run_dir / LOCK_NAME
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def lock_run(run_dir: Path, what: str) -> RunLock:
    """The run's lock, or a one-line error naming who holds it."""
    lock = try_lock(run_dir)
    if lock is None:
        raise SegnetError(f"{what} is still running ({holder(run_dir)}); wait for it to end or stop it "
                          "(Ctrl-C or kill <pid>) before resuming it")
    return lock


@contextlib.contextmanager
def store_lock(path: Path, timeout: float = 120.0) -> Iterator[None]:
    """An exclusive lock on ``path`` (waits up to ``timeout`` seconds), for one-time store set-up."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SegnetError(f"{path}: another process has held this lock for {timeout:.0f} s") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)

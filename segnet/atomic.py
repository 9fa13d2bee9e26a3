"""Writing a file or a folder atomically: readers see the old version or the new one, never half of one.

Everything segnet writes in place (checkpoints, the resume state, fold CSVs, submissions, datasets) goes
through :func:`atomic_path`: the content is written under a temporary name in the same folder (so the
final rename stays on one file system), then ``os.replace``-d onto the target. On an exception the
temporary file or folder is removed and the target is left as it was. ``fsync=True`` also flushes the
file and the folder entry to disk, for power loss; a killed process needs only the rename.

Temporary names look like ``.<stem>.tmp-<pid>-<n><suffix>``: hidden, unique per process and call, and
keeping the suffix (Keras refuses to save a model to a name that does not end in ``.keras``). Only
SIGKILL (or power loss) can leave one behind; the next atomic write into the same folder removes the
temporary files of writers that are no longer alive (the pid in the name, checked on this machine).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

_counter = itertools.count()
_TEMP = re.compile(r"\..*\.tmp-(\d+)-\d+.*")


def temp_path(path: str | Path, tag: str = "tmp") -> Path:
    """A fresh hidden name beside ``path`` for writing it: ``.<stem>.<tag>-<pid>-<n><suffix>``."""
    p = Path(path)
    return p.with_name(f".{p.stem}.{tag}-{os.getpid()}-{next(_counter)}{p.suffix}")


def remove(path: str | Path) -> None:
    """Remove a file or a folder tree if it exists; errors are ignored (used in cleanup paths)."""
    p = Path(path)
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            p.unlink()


def unwritable(folder: str | Path) -> str | None:
    """Why files cannot be written in ``folder`` (made if missing), or None when they can: a real
    probe file, since permission bits do not tell (root, read-only mounts, a file in the way)."""
    folder = Path(folder)
    probe = folder / f".probe-{os.getpid()}-{next(_counter)}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
    except OSError as e:
        return e.strerror or str(e)
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def sweep(folder: str | Path) -> None:
    """Remove the temporary files and folders (``temp_path`` names) that dead writers left in ``folder``."""
    with contextlib.suppress(OSError):
        for p in Path(folder).iterdir():
            m = _TEMP.fullmatch(p.name)
            if m and int(m[1]) != os.getpid() and not _alive(int(m[1])):
                remove(p)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, *, fsync: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path``: on a clean exit it replaces ``path``; on an error it is removed.

    The caller creates the file (or folder) at the yielded path. Creating the parent folder is the
    caller's business too: its errors (a file in the way, a read-only folder) are the caller's to word.
    """
    target = Path(path)
    sweep(target.parent)
    tmp = temp_path(target)
    try:
        yield tmp
        if fsync and tmp.is_file():
            _fsync(tmp)
        os.replace(tmp, target)
        if fsync:
            _fsync(target.parent)
    except BaseException:  # Ctrl-C and SIGTERM (segnet.errors.Terminated) too: no temporary file left
        remove(tmp)
        raise


def atomic_write(path: str | Path, writer: Callable[[Path], object], *, fsync: bool = False) -> Path:
    """``writer(tmp)`` writes the content to a temporary path, then it replaces ``path``; returns ``path``."""
    with atomic_path(path, fsync=fsync) as tmp:
        writer(tmp)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, *, fsync: bool = False) -> Path:
    """Write ``text`` (UTF-8, ``\\n`` line ends) to ``path`` atomically; returns ``path``."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8", newline="\n"), fsync=fsync)

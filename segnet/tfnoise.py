"""TensorFlow's start-up lines, hidden from the command line's stderr (``segnet.cli`` calls :func:`install`).

Importing TensorFlow writes to file descriptor 2 from C++, below Python's ``sys.stderr`` and, for the first
lines, before absl has read ``TF_CPP_MIN_LOG_LEVEL`` (so ``segnet/__init__.py``'s default level cannot
silence them), on a machine without CUDA::

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 00:00:1700000000.000000   1234 cudart_stub.cc:31] Could not find cuda drivers on your machine, ...

(twice), plus, at lower levels or on other machines, the oneDNN and CPU-instruction notices, the CUDA
factory registrations and ``failed call to cuInit`` at the first device query. None of it is actionable.

:func:`install` (a no-op when the user set ``TF_CPP_MIN_LOG_LEVEL``: then everything TensorFlow prints
shows) hooks the first ``import tensorflow`` of the process: during that import and a first device
listing, fd 2 points at a temporary file; afterwards every line that is not one of the known start-up
lines (:data:`NOISE`) is written to the real stderr, in order. A real error (a missing library, a Python
warning, anything unknown) still shows, and a Python exception raised by the import propagates as usual.
Only the command line installs it: importing segnet as a library changes nothing about stderr.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Iterator

import segnet

_ABSL = r"[IWE]\d{4} \d\d:\d\d:[\d.]+\s+\d+ [\w.\-/]+:\d+\] "  # absl's C++ log prefix (not F: fatal)
NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|To enable the following instructions: .* in other operations, rebuild TensorFlow .*"
    rf"|{_ABSL}(?:"
    r"Could not find cuda drivers on your machine, GPU will not be used\."
    r"|This TensorFlow binary is optimized to use available CPU instructions .*"
    r"|oneDNN custom operations are on\..*"
    r"|failed call to cuInit: .*"
    r"|Unable to register cu(?:DNN|FFT|BLAS) factory: .*"
    r"|computation placer already registered\..*"
    r"|TF-TRT Warning: Could not find TensorRT"
    r")"
)


def wanted(text: str) -> str:
    """``text`` without the known start-up lines (``NOISE``), everything else kept as it was."""
    return "".join(ln for ln in text.splitlines(keepends=True) if not NOISE.fullmatch(ln.rstrip("\r\n")))


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
    """Within the block, fd 2 (C++ and Python alike) goes to a temporary file; on leaving, what is not
    start-up noise is written to the real stderr."""
    sys.stderr.flush()
    with tempfile.TemporaryFile() as capture:
        saved = os.dup(2)
        try:
            os.dup2(capture.fileno(), 2)
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            rest = wanted(capture.read().decode(errors="replace"))
            if rest:
                sys.stderr.write(rest)
                sys.stderr.flush()


class _FirstImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loading of ``tensorflow`` in :func:`filtered_stderr`, once."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "tensorflow":
            return None
        uninstall()
        spec = importlib.util.find_spec(fullname)  # the other finders, as without the hook
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader, exec_module = spec.loader, spec.loader.exec_module

        def quiet_exec_module(module) -> None:
            try:
                with filtered_stderr():
                    exec_module(module)
                    # The first device query prints its own CUDA lines; a physical listing leaves the
                    # runtime unconfigured (thread counts and memory growth can still be set). Should it
                    # fail, the real query later fails in the open.
                    with contextlib.suppress(Exception):
                        module.config.list_physical_devices()
            finally:
                with contextlib.suppress(AttributeError):
                    del loader.exec_module  # back to the class's method

        loader.exec_module = quiet_exec_module
        return spec


_HOOK = _FirstImport()


def install() -> bool:
    """Hide TensorFlow's start-up lines in this process; False when there is nothing to do (the user set
    ``TF_CPP_MIN_LOG_LEVEL``, or TensorFlow is already imported)."""
    if segnet.TF_LOG_LEVEL_FROM_USER or "tensorflow" in sys.modules:
        return False
    if _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)
    return True


def uninstall() -> None:
    with contextlib.suppress(ValueError):
        sys.meta_path.remove(_HOOK)

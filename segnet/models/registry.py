"""One registry mechanism for the pluggable parts of the model (encoders, decoders): one file = one entry.

A registry package (``segnet/models/decoders/``, ``segnet/models/encoders/``) holds one module per entry;
each module defines ``SPEC``, its spec object (with a ``name`` and an ``order``). The package's
``__init__`` calls :meth:`Registry.discover`, which imports every module of the package found by
:mod:`pkgutil` — a new file is picked up without editing any other file. Modules whose names start with
``_`` are private helpers and are skipped.

Listing order (help texts, ``segnet bench``, tests, error messages list names alphabetically): by the
spec's ``order`` (an int, default 100, so new entries come after the built-in ones), then by name.
Importing a registry package must not import TensorFlow: entry modules import it inside their builders.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from segnet.errors import ConfigError

DEFAULT_ORDER = 100


class Registry(dict):
    """``name → spec`` in listing order; a dict, so ``list(REG)``, ``REG[name]`` and ``.items()`` work."""

    def __init__(self, kind: str, key: str):
        super().__init__()
        self.kind = kind  # "decoder"
        self.key = key  # the config key that names an entry: "model.decoder"
        self.modules: dict[str, str] = {}  # name -> the module that defined it (discovered entries)

    def register(self, spec: Any) -> Any:
        """Add ``spec`` (ValueError if its name is taken) and keep the listing order."""
        if spec.name in self:
            raise ValueError(f"{self.kind} {spec.name!r} registered twice")
        specs = sorted([*self.values(), spec], key=lambda s: (getattr(s, "order", DEFAULT_ORDER), s.name))
        self.clear()
        self.update((s.name, s) for s in specs)
        return spec

    def unregister(self, name: str) -> None:
        """Remove an entry (tests that register a temporary one)."""
        self.pop(name, None)
        self.modules.pop(name, None)

    def discover(self, package: str) -> None:
        """Import every public module of ``package`` and register its ``SPEC``."""
        pkg = importlib.import_module(package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if info.name.startswith("_"):
                continue
            module = importlib.import_module(f"{package}.{info.name}")
            spec = getattr(module, "SPEC", None)
            if spec is None:
                raise ImportError(f"{module.__file__}: a {self.kind} module must define SPEC (or start with '_')")
            if self.get(spec.name) is not spec:
                self.register(spec)
                self.modules[spec.name] = module.__name__

    def lookup(self, name: str) -> Any:
        """The spec of ``name``; ConfigError naming the config key and every valid name otherwise."""
        if name not in self:
            raise ConfigError(f"{self.key}: unknown {self.kind} {name!r}; valid: {', '.join(sorted(self))}")
        return self[name]

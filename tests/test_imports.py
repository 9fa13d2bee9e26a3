"""The ``segnet`` package has no import cycle, counting function-local imports too.

Every module under ``segnet/`` is parsed with :mod:`ast` (nothing is imported). An edge ``A → B`` means
"module A imports segnet module B", wherever the import statement sits: at module level, inside a
function, a method or a branch. A cycle that function-local imports keep from failing at import time
is still a cycle in the design, which is what this test is about.

What counts as importing which module:

* ``import segnet.x.y`` and ``from segnet.x.y import name`` depend on ``segnet.x.y`` (for a package,
  its ``__init__``);
* ``from segnet.x import y`` depends on ``segnet.x.y`` when ``y`` is a module, else on ``segnet.x``
  (``y`` is a name defined in the package ``__init__``): ``from segnet.models.decoders import DecoderSpec``
  inside a decoder plugin depends on ``decoders/__init__``, which imports the plugins — a cycle;
* the parent packages Python initialises on the way (``segnet``, ``segnet.x``) are *not* counted, or
  every package ``__init__`` that imports its own submodules would be in a cycle with them;
* relative imports are resolved; imports under ``if TYPE_CHECKING:`` are skipped (never executed);
* plugin discovery counts as importing the plugins: ``importlib.import_module("segnet.…")`` with a literal
  name imports that module; inside a package ``__init__``, ``import_module`` of a computed name (a
  ``pkgutil`` walk, ``f"{__name__}.{m}"``) or a call of a *discovery function* with ``__name__``,
  ``__package__`` or ``__path__`` as an argument (``DECODERS.discover(__name__)``) imports every public
  (not ``_``-prefixed) direct submodule of the package. A discovery function is any function or method
  defined in segnet whose body calls both ``pkgutil.iter_modules``/``walk_packages`` and ``import_module``;
* a module importing itself is ignored.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "segnet"


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def discover_modules(root: Path = ROOT) -> dict[str, Path]:
    """``{"segnet.models.layers": path, "segnet.models": .../models/__init__.py, ...}``."""
    return {_module_name(p, root): p for p in sorted(root.rglob("*.py")) if "__pycache__" not in p.parts}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:`` blocks (their ``else`` is kept)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _call_name(node: ast.AST) -> str | None:
    """``f`` for ``f(...)``, ``m`` for ``x.y.m(...)``; None for anything else."""
    if not isinstance(node, ast.Call):
        return None
    f = node.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None


_OWN_PACKAGE = {"__name__", "__package__", "__path__"}


def discovery_functions(modules: dict[str, Path]) -> set[str]:
    """Names of the functions/methods in segnet that import every module of a package (pkgutil + import_module)."""
    names = set()
    for path in modules.values():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                calls = {_call_name(n) for n in ast.walk(node)}
                if "import_module" in calls and calls & {"iter_modules", "walk_packages"}:
                    names.add(node.name)
    return names


def imports_of(name: str, path: Path, modules: dict[str, Path], discovery: frozenset[str] = frozenset()) -> set[str]:
    """The segnet modules that module ``name`` (at ``path``) imports anywhere in its code."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    plugins = {m for m in modules if m.rpartition(".")[0] == name and not m.rpartition(".")[2].startswith("_")}
    found: set[str] = set()

    def target(dotted: str) -> None:
        if dotted in modules:
            found.add(dotted)

    for node in _runtime_nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in modules:  # `from segnet.x import y`, y a module
                    target(sub)
                else:  # a name defined in `source` (or `*`)
                    target(source)
        elif _call_name(node) == "import_module" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                target(arg.value)
            elif is_package:  # computed name in a package __init__: discovery of its submodules
                found |= plugins
        elif is_package and _call_name(node) in discovery:
            args = [*node.args, *(k.value for k in node.keywords)]
            if any(isinstance(a, ast.Name) and a.id in _OWN_PACKAGE for a in args):
                found |= plugins
    found.discard(name)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = discover_modules(root)
    discovery = frozenset(discovery_functions(modules))
    return {name: imports_of(name, path, modules, discovery) for name, path in modules.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted; only those of two or more modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        comp.append(m)
                        if m == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return sorted(out)


def shortest_cycles(graph: dict[str, set[str]], component: list[str]) -> list[list[str]]:
    """For each module of a component, the shortest cycle through it (BFS inside the component), deduplicated,
    each written from its alphabetically first module and back to it."""
    members = set(component)
    cycles: dict[frozenset, list[str]] = {}
    for start in component:
        parent = {start: None}
        queue = [start]
        found = None
        while queue and found is None:
            nxt = []
            for node in queue:
                for child in sorted(graph[node] & members):
                    if child == start:
                        found = node
                        break
                    if child not in parent:
                        parent[child] = node
                        nxt.append(child)
                if found is not None:
                    break
            queue = nxt
        path = [found]
        while parent[path[-1]] is not None:
            path.append(parent[path[-1]])
        path.reverse()
        first = path.index(min(path))  # the same cycle found from another module prints the same
        path = path[first:] + path[:first]
        cycles.setdefault(frozenset(path), path + [path[0]])
    return sorted(cycles.values(), key=lambda c: (len(c), c))


def describe_cycles(graph: dict[str, set[str]]) -> str:
    lines = []
    for comp in strongly_connected(graph):
        lines.append(f"strongly connected ({len(comp)}): {', '.join(comp)}")
        lines += [f"    {' -> '.join(cycle)}" for cycle in shortest_cycles(graph, comp)]
    return "\n".join(lines)


# ------------------------------------------------------------------------------- the checker itself


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / "segnet" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root / "segnet"


def test_the_checker_sees_function_local_relative_dynamic_and_package_imports(tmp_path):
    root = _write(tmp_path, {
        "__init__.py": "",
        "a.py": "def f():\n    from segnet import b\n",
        "b.py": "from .c import thing\n",
        "c.py": "import segnet.a\n",
        "d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from segnet import e\n",
        "e.py": "import segnet.d\n",
        "reg/__init__.py": "import importlib\nfor m in ('p',):\n    importlib.import_module(f'{__name__}.{m}')\n",
        "reg/p.py": "from segnet.reg import register\n",
        "reg/base.py": "",
        "reg/q.py": "from segnet.reg import base\nfrom segnet.reg.base import x\n",
        "reglib.py": (
            "import importlib, pkgutil\n"
            "class Registry:\n"
            "    def discover(self, package):\n"
            "        for m in pkgutil.iter_modules(importlib.import_module(package).__path__):\n"
            "            importlib.import_module(package + '.' + m.name)\n"
        ),
        "plug/__init__.py": "from segnet.reglib import Registry\nR = Registry()\nR.discover(__name__)\n",
        "plug/one.py": "from segnet.plug import R\n",
        "plug/_private.py": "from segnet.plug import R\n",
        "plug/two.py": "from segnet.reglib import Registry\n",
        "quiet/__init__.py": "import logging\nlog = logging.getLogger(__name__)\n",
        "quiet/mod.py": "from segnet.quiet import log\n",
    })
    graph = import_graph(root)
    assert graph["segnet.a"] == {"segnet.b"}  # function-local, `from package import module`
    assert graph["segnet.b"] == {"segnet.c"}  # relative
    assert graph["segnet.c"] == {"segnet.a"}
    assert graph["segnet.d"] == set()  # TYPE_CHECKING only
    assert graph["segnet.reg"] == {"segnet.reg.p", "segnet.reg.q", "segnet.reg.base"}  # plugin discovery
    assert graph["segnet.reg.p"] == {"segnet.reg"}  # a name from the package: its __init__
    assert graph["segnet.reg.q"] == {"segnet.reg.base"}  # a module of the package: not its __init__
    assert graph["segnet.plug"] == {"segnet.reglib", "segnet.plug.one", "segnet.plug.two"}  # a discovery method
    assert graph["segnet.quiet"] == set()  # __name__ passed to something that does not import modules
    assert strongly_connected(graph) == [
        ["segnet.a", "segnet.b", "segnet.c"], ["segnet.plug", "segnet.plug.one"], ["segnet.reg", "segnet.reg.p"],
    ]
    text = describe_cycles(graph)
    assert "segnet.a -> segnet.b -> segnet.c -> segnet.a" in text
    assert "segnet.reg -> segnet.reg.p -> segnet.reg" in text


def test_a_package_importing_its_own_modules_is_not_a_cycle(tmp_path):
    root = _write(tmp_path, {
        "__init__.py": "",
        "models/__init__.py": "from segnet.models.layers import L\nfrom segnet.models.unet import build\n",
        "models/layers.py": "import keras\n",
        "models/unet.py": "from segnet.models import layers\nfrom segnet.models.layers import L\n",
    })
    assert strongly_connected(import_graph(root)) == []


# ------------------------------------------------------------------------------- the package

def test_segnet_has_no_import_cycle():
    graph = import_graph()
    assert "segnet.models.layers" in graph and "segnet.cli" in graph  # the walk found the package
    cycles = describe_cycles(graph)
    print(cycles)
    assert not cycles, "import cycles in segnet (A -> B: A imports B):\n" + cycles

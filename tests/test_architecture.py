"""The import structure of src/ktransfer: no import circle, and lower layers never import higher ones.

The graph is read from the source with `ast`, counting every import of a ktransfer module:
at module level, inside functions (a function-local import that closes a circle is still a
circle), under `if TYPE_CHECKING:`, and the package `__init__` that importing a submodule runs
first. The root package `ktransfer` is the one exception to that last rule: its `__init__`
imports nothing but the version at run time (checked below), so running it first adds no edge.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "ktransfer"


@dataclass(frozen=True)
class Edge:
    """`source` imports `target` at `path`:`line`."""

    source: str
    target: str
    path: Path
    line: int

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} ({self.path.relative_to(SRC.parent)}:{self.line})"


def modules(src: Path, root: str = ROOT) -> dict[str, Path]:
    """Every module of the package `root` under `src`, by dotted name (a package by its own name)."""
    found = {}
    for path in sorted((src / root).rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imported(module: str, path: Path, node: ast.Import | ast.ImportFrom, known: dict[str, Path]) -> list[str]:
    """The modules of `known` that one import statement names (for `from a import b`, also `a.b` if a module)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join([*package, base] if base else package)
    return [base, *(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known)]


def _owner(name: str, known: dict[str, Path]) -> str | None:
    """The module of `known` that `name` is or lies in (`a.b.c` -> `a.b` when c is not a module)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def import_edges(src: Path, root: str = ROOT) -> list[Edge]:
    """Every import of a module of `root` by another, plus the parent packages such an import runs first."""
    known = modules(src, root)
    edges: list[Edge] = []
    for module, path in known.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            if isinstance(node, ast.ImportFrom) and node.module == "__future__":
                continue
            for name in _imported(module, path, node, known):
                target = _owner(name, known)
                if target is None or target == module:
                    continue
                edges.append(Edge(module, target, path, node.lineno))
                parts = target.split(".")
                for i in range(2, len(parts)):  # packages between the root and the target run first
                    parent = ".".join(parts[:i])
                    if parent != module and not module.startswith(parent + "."):
                        edges.append(Edge(module, parent, path, node.lineno))
    return edges


def strongly_connected(nodes: Iterable[str], edges: list[Edge]) -> list[list[str]]:
    """The strongly connected components of the graph with more than one node (Tarjan, iterative)."""
    succ: dict[str, set[str]] = {n: set() for n in nodes}
    for e in edges:
        succ.setdefault(e.source, set()).add(e.target)
        succ.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in sorted(succ):
        if start in index:
            continue
        work = [(start, iter(sorted(succ[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(succ[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def _describe(component: list[str], edges: list[Edge]) -> str:
    members = set(component)
    inside = sorted({str(e) for e in edges if e.source in members and e.target in members})
    return f"{len(component)} modules: {', '.join(component)}\n  " + "\n  ".join(inside)


def test_the_graph_reader_finds_a_circle_closed_by_a_function_local_import(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("def f():\n    from pkg.sub.high import g\n    return g\n")
    (pkg / "sub" / "__init__.py").write_text("from .high import g\n")
    (pkg / "sub" / "high.py").write_text("import pkg.low as low\n\ndef g():\n    return low\n")
    (pkg / "alone.py").write_text("import os\n")
    edges = import_edges(tmp_path, "pkg")
    assert {(e.source, e.target) for e in edges} == {
        ("pkg.low", "pkg.sub.high"), ("pkg.low", "pkg.sub"), ("pkg.sub", "pkg.sub.high"), ("pkg.sub.high", "pkg.low")}
    assert strongly_connected(modules(tmp_path, "pkg"), edges) == [["pkg.low", "pkg.sub", "pkg.sub.high"]]


def test_no_import_circle_in_the_library() -> None:
    edges = import_edges(SRC)
    components = strongly_connected(modules(SRC), edges)
    assert not components, "import circles (each edge: file:line of the import):\n" + "\n".join(
        _describe(c, edges) for c in components)


def test_the_root_package_runs_no_import_but_the_version_and_no_module_imports_it() -> None:
    """`ktransfer/__init__.py` exposes names lazily, so importing any submodule costs nothing else."""
    tree = ast.parse((SRC / ROOT / "__init__.py").read_text(encoding="utf-8"))
    run_time = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert [ast.unparse(n) for n in run_time if "ktransfer" in ast.unparse(n)] == [
        "from ktransfer._version import __version__"]
    importers = sorted(str(e) for e in import_edges(SRC) if e.target == ROOT)
    assert not importers, "modules importing the root package (import ktransfer._version instead):\n" + "\n".join(importers)


def _imports_of(prefix: str) -> list[Edge]:
    """The imports made by `prefix` and its submodules."""
    return [e for e in import_edges(SRC) if e.source == prefix or e.source.startswith(prefix + ".")]


def _hits(edges: list[Edge], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(str(e) for e in edges if any(e.target == f or e.target.startswith(f + ".") for f in forbidden))


@pytest.mark.parametrize(("layer", "forbidden"), [
    # divergences know no terms (nor anything else of the library)
    ("ktransfer.divergences", ("ktransfer",)),
    # terms know no loop and no wing
    ("ktransfer.knowledge", ("ktransfer.sequence", "ktransfer.hops", "ktransfer.runner", "ktransfer.train",
                             "ktransfer.engine", "ktransfer.config", "ktransfer.terms", "ktransfer.selection")),
    # data knows no runner, no model and no loop
    ("ktransfer.data", ("ktransfer.runner", "ktransfer.config", "ktransfer.train", "ktransfer.engine",
                        "ktransfer.teachers", "ktransfer.models", "ktransfer.building", "ktransfer.sequence")),
    # models know no runner and no data set
    ("ktransfer.models", ("ktransfer.runner", "ktransfer.config", "ktransfer.train", "ktransfer.engine",
                          "ktransfer.teachers", "ktransfer.data", "ktransfer.building")),
    # the loop knows no wing, no run config and no runner
    ("ktransfer.engine", ("ktransfer.sequence", "ktransfer.hops", "ktransfer.runner", "ktransfer.config",
                          "ktransfer.teachers", "ktransfer.models", "ktransfer.building", "ktransfer.train")),
    # selectors know no loop
    ("ktransfer.selection", ("ktransfer.engine", "ktransfer.train", "ktransfer.runner", "ktransfer.config",
                             "ktransfer.sequence", "ktransfer.hops")),
    # files know no loop
    ("ktransfer.io", ("ktransfer",)),
    ("ktransfer.checkpoint", ("ktransfer.engine", "ktransfer.train", "ktransfer.runner", "ktransfer.config")),
    ("ktransfer.cache", ("ktransfer.engine", "ktransfer.train", "ktransfer.runner", "ktransfer.config",
                         "ktransfer.checkpoint")),
])
def test_a_lower_layer_imports_no_higher_one(layer: str, forbidden: tuple[str, ...]) -> None:
    allowed = ("ktransfer.errors", "ktransfer.registry", "ktransfer.schema") if layer == "ktransfer.divergences" else ()
    hits = [h for h in _hits(_imports_of(layer), forbidden) if not any(f" -> {a} " in h for a in allowed)]
    assert not hits, f"{layer} imports a higher layer:\n" + "\n".join(hits)


def test_the_product_imports_no_benchmark() -> None:
    found = []
    for module, path in modules(SRC).items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            found += [f"{module} ({path.name}:{node.lineno}): {n}" for n in names
                      if n == "benchmarks" or n.startswith("benchmarks.")]
    assert not found, "the library imports benchmark code:\n" + "\n".join(found)


def test_starting_a_run_imports_no_scikit_learn() -> None:
    """scikit-learn (with scipy and pandas) takes seconds to import; only the runs that split tabular data or fit
    out-of-fold confidences need it, so every process a run starts (each torchrun worker, each CLI call) is spared."""
    code = ("import sys, ktransfer.runner, ktransfer.hops, ktransfer.cli; "
            "print(sorted(m for m in ('sklearn', 'pandas') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(SRC)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", f"importing the runner imports {done.stdout.strip()}"

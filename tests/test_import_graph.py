"""The import graph reads top-down (issue 28): no cycle between modules or between packages, and
every import goes from a higher layer to a lower one:

    cli → reporting → pipeline → stages → methods → train → models / cluster / evaluation
        → search → data → runtime / progress → artifacts / options / registry → errors / version

Imports are read with ``ast`` (nothing is imported), function-level ones included: a cycle
hidden inside a function is still a cycle. Only imports under ``if TYPE_CHECKING:`` are left
out (they never run). A new package must be given its layer in :data:`LAYERS`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "reidctl"

#: Each top-level unit of reidctl (a subpackage or a root module) and its layer: a unit may
#: import only units of a lower layer. ``__init__`` (the package's public entry points) is the top.
LAYERS = {
    "__init__": 13, "__main__": 12, "cli": 11, "reporting": 10, "pipeline": 9, "stages": 8, "methods": 7,
    "train": 6, "models": 5, "cluster": 5, "evaluation": 5, "search": 4, "data": 3,
    "runtime": 2, "progress": 2, "options": 1, "artifacts": 1, "registry": 1, "errors": 0, "version": 0,
}


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name → file, for every ``.py`` under ``root`` (a package folder)."""
    names = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run (those under ``if TYPE_CHECKING:`` left out)."""
    found = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_edges(root: Path) -> dict[str, set[str]]:
    """Module → the package's modules it imports (``from P import name`` counts as an import of
    the module ``P.name`` where that is a module, else of ``P``)."""
    names = module_names(root)
    top = root.name
    edges: dict[str, set[str]] = {name: set() for name in names}
    for name, path in names.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _runtime_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in names else base for a in node.names]
            for target in targets:
                if target != top and not target.startswith(top + "."):
                    continue
                while target not in names:
                    target = target.rpartition(".")[0]
                if target != name:
                    edges[name].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return found


def unit(module: str) -> str:
    """The top-level unit of a module: ``reidctl.cluster.dbscan`` → ``cluster``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def unit_edges(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    units: dict[str, set[str]] = {}
    for a, targets in edges.items():
        units.setdefault(unit(a), set()).update(unit(b) for b in targets if unit(b) != unit(a))
    return units


def layer_violations(edges: dict[str, set[str]], layers: dict[str, int]) -> list[str]:
    """Each import of a unit from a unit of the same or a higher layer, or of an unlisted unit."""
    bad = []
    for a, targets in sorted(edges.items()):
        for b in sorted(targets):
            ua, ub = unit(a), unit(b)
            if ua == ub:
                continue
            if ua not in layers or ub not in layers:
                bad.append(f"{a} -> {b}: give {ua if ua not in layers else ub} a layer in LAYERS")
            elif layers[ub] >= layers[ua]:
                bad.append(f"{a} (layer {layers[ua]}) -> {b} (layer {layers[ub]})")
    return bad


def test_reidctl_has_no_import_cycle_between_modules():
    assert cycles(import_edges(PACKAGE)) == []


def test_reidctl_has_no_import_cycle_between_packages():
    assert cycles(unit_edges(import_edges(PACKAGE))) == []


def test_reidctl_imports_go_down_the_layers():
    assert layer_violations(import_edges(PACKAGE), LAYERS) == []


def test_the_root_keeps_only_packages_and_cross_cutting_modules():
    loose = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert loose == ["__init__", "__main__", "artifacts", "errors", "options", "progress", "registry", "version"]


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_check_finds_a_cycle_hidden_in_a_function_and_ignores_type_checking(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "from pkg import b\n",
        "b.py": "def f():\n    from pkg.a import x\n",
        "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import d\n",
        "d.py": "import pkg.c\n",
        "sub/__init__.py": "from . import low\n",
        "sub/low.py": "from ..a import y\n",
    })
    edges = import_edges(root)
    assert edges["pkg.b"] == {"pkg.a"} and edges["pkg.c"] == set() and edges["pkg.sub.low"] == {"pkg.a"}
    assert cycles(edges) == [["pkg.a", "pkg.b"]]
    layers = {"a": 1, "b": 2, "c": 0, "d": 1, "sub": 3}
    assert layer_violations(edges, layers) == ["pkg.a (layer 1) -> pkg.b (layer 2)"]
    with pytest.raises(AssertionError, match="give"):
        assert not layer_violations(edges, {"a": 1, "b": 2})

"""The house rules of docs/architecture.md, checked on the source: one-way imports, no cycles,
a thin CLI, short stage functions.

Imports are read from the source (every ``import`` statement, function-level ones included;
``if TYPE_CHECKING:`` blocks are not imports at run time and are skipped), so a lazy import
that points upwards is caught as surely as a module-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "steerscreen"

LAYERS = [
    {"steerscreen", "errors", "files", "hub", "memory", "exact", "specs", "layout", "config"},
    {"models", "saes", "corpus"},
    {"stats", "steering", "screening", "report"},
    {"pipeline"},
    {"cli", "cli_options", "__main__", "notebook"},
]
"""Lowest first: a module may import its own layer and the layers below, never above."""


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(tree: ast.AST) -> set[str]:
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("steerscreen"):
                out.add(node.module)
                for alias in node.names:  # "from steerscreen.x import y" where y is a module
                    full = f"{node.module}.{alias.name}"
                    if (SRC / (full.replace(".", "/") + ".py")).is_file() or (
                            SRC / full.replace(".", "/")).is_dir():
                        out.add(full)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("steerscreen"))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


FACADE = ("steerscreen", "steerscreen.notebook")
"""The one allowed upward edge: the package root re-exports the notebook API lazily (PEP 562
``__getattr__``), so ``ss.Study`` works while ``import steerscreen`` loads nothing, and no
module below the top layer can reach the notebook through it."""


def _graph() -> dict[str, set[str]]:
    graph = {_module(p): _runtime_imports(ast.parse(p.read_text(encoding="utf-8")))
             for p in PACKAGE.rglob("*.py")}
    graph[FACADE[0]].discard(FACADE[1])
    return graph


def test_the_facade_is_lazy() -> None:
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    assert all(not (isinstance(n, ast.ImportFrom) and n.module and n.module.startswith(
        "steerscreen")) for n in top), "the package root imports steerscreen modules eagerly"


def _area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _layer(module: str) -> int:
    area = _area(module)
    return next(i for i, layer in enumerate(LAYERS) if area in layer)


def test_every_module_has_a_layer() -> None:
    for module in _graph():
        _layer(module)  # StopIteration names a module docs/architecture.md does not place


def test_imports_flow_one_way() -> None:
    upward = [f"{a} -> {b}" for a, bs in _graph().items() for b in bs
              if _layer(b) > _layer(a)]
    assert upward == [], "imports that point up a layer:\n" + "\n".join(sorted(upward))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            strong(v)
    return out


def _without_packages(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    # A package's __init__ re-exports its modules: that edge is not a dependency cycle.
    return {a: {b for b in bs if not a.startswith(b + ".") and not b.startswith(a + ".")}
            for a, bs in graph.items()}


def test_no_import_cycles() -> None:
    assert _cycles(_without_packages(_graph())) == []


def test_no_cycles_between_areas() -> None:
    areas: dict[str, set[str]] = {}
    for a, bs in _graph().items():
        areas.setdefault(_area(a), set()).update(_area(b) for b in bs if _area(b) != _area(a))
    assert _cycles(areas) == []


def test_the_science_never_imports_the_pipeline() -> None:
    bad = [f"{a} -> {b}" for a, bs in _graph().items() for b in bs
           if _area(b) == "pipeline" and _layer(a) < _layer(b)]
    assert bad == []


def test_cli_is_thin() -> None:
    assert len((PACKAGE / "cli.py").read_text(encoding="utf-8").splitlines()) <= 250


@pytest.mark.parametrize("path", sorted((PACKAGE / "pipeline").glob("*.py")), ids=lambda p: p.name)
def test_stage_functions_are_short(path: Path) -> None:
    long = [f"{node.name}: {node.end_lineno - node.lineno + 1} lines"
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.end_lineno - node.lineno + 1 > 60]
    assert long == []

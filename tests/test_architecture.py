"""The house has no circles and no stairs going up: every import of a fedoa module, function-local
ones included, points to a module of the same layer or a lower one (docs/architecture.md), and no
group of modules imports itself round."""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

#: lowest first; a module may import its own layer and the ones above it in this list
LAYERS = [
    ("base", ["fedoa.errors", "fedoa.io", "fedoa.paths", "fedoa.seeding", "fedoa.kinds", "fedoa.registry"]),
    ("config", ["fedoa.config"]),
    ("data", ["fedoa.data"]),
    ("model", ["fedoa.model"]),
    ("training", ["fedoa.training"]),
    ("algorithms", ["fedoa.algorithms", "fedoa.checkpoint"]),
    ("evaluation", ["fedoa.evaluation"]),
    ("reports", ["fedoa.reports"]),
    ("runtime", ["fedoa.runtime"]),
    ("comparison and finished runs", ["fedoa.compare", "fedoa.finished"]),
    ("entry points", ["fedoa.cli", "fedoa.testing"]),
]


def layer_of(module: str) -> int:
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS and docs/architecture.md")


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")


def imports() -> dict[str, set[str]]:
    """Module -> the fedoa modules it imports (``from fedoa import kinds`` names ``fedoa.kinds``)."""
    modules = {module_name(p) for p in (SRC / "fedoa").rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for path in (SRC / "fedoa").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "fedoa":
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    graph[module_name(path)].add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                graph[module_name(path)] |= {a.name for a in node.names if a.name.split(".")[0] == "fedoa"}
    return graph


def test_no_import_goes_up_a_layer():
    # the package itself imports the table of methods once (it fills the registry): the root, not a layer
    upward = sorted(
        f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
        for a, targets in imports().items() if a != "fedoa"
        for b in targets if b != "fedoa" and layer_of(b) > layer_of(a)
    )
    assert not upward, "\n".join(upward)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
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
                out.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle():
    graph = imports()
    assert not cycles(graph), cycles(graph)
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the check can fail


def test_the_registry_is_full_without_importing_upward():
    from fedoa.registry import ALGORITHMS, SETTINGS, discover

    discover()  # what config does on its first method lookup (alone on an xdist worker, nothing did it yet)
    assert {"fedoa", "fedit", "ditto", "feddpa"} <= set(ALGORITHMS) and "fedoa" in SETTINGS
    assert "fedoa.algorithms" not in imports()["fedoa.config"] | imports()["fedoa.registry"]

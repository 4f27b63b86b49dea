"""The package's import structure: no import cycles, and no import up the layers that
docs/code.md lists (the one place the order is written; this test reads it)."""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "exptrack"


def module_files() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The exptrack modules `name` imports anywhere in its file (module level, inside functions,
    under TYPE_CHECKING: each is a dependency)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                origin = ".".join([*base, *([node.module] if node.module else [])])
            else:
                origin = node.module or ""
            targets = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in modules else origin for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import exptrack.data.layout.X` -> the module
                target = target.rpartition(".")[0]
            if target.startswith("exptrack") and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imported(name, path, modules) for name, path in modules.items()}


def documented_layers() -> list[tuple[str, list[str]]]:
    """[(layer name, module patterns)], lowest first, from docs/code.md's "Layers" list."""
    text = (ROOT / "docs" / "code.md").read_text()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    return [(m.group(1), re.findall(r"`([\w.*]+)`", m.group(2)))
            for m in re.finditer(r"^\d+\. \*\*(\w[\w ]*)\*\*: (.*(?:\n   .*)*)", section, re.M)]


def layer_of(module: str, layers: list[tuple[str, list[str]]]) -> int:
    found = [i for i, (_, patterns) in enumerate(layers) if any(fnmatch.fnmatchcase(module, p) for p in patterns)]
    assert len(found) == 1, f"{module} is in {len(found)} layers of docs/code.md (needs exactly one)"
    return found[0]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles (strongly connected groups of more than one module), Tarjan's way."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_package_has_no_import_cycle():
    assert cycles(import_graph()) == []


def test_no_module_imports_from_a_layer_above_its_own():
    layers = documented_layers()
    assert len(layers) >= 5, "docs/code.md's Layers list was not found"
    graph = import_graph()
    upward = [f"{m} ({layers[layer_of(m, layers)][0]}) imports {d} ({layers[layer_of(d, layers)][0]})"
              for m, deps in sorted(graph.items()) for d in sorted(deps)
              if layer_of(d, layers) > layer_of(m, layers)]
    assert upward == []


def test_the_checks_see_a_cycle_and_an_import_inside_a_function(tmp_path):
    assert cycles({"exptrack.a": {"exptrack.b"}, "exptrack.b": {"exptrack.a"}}) == [["exptrack.a", "exptrack.b"]]
    probe = tmp_path / "a.py"
    probe.write_text("def f():\n    from .b import thing\n")
    assert imported("exptrack.a", probe, {"exptrack.a": probe, "exptrack.b": tmp_path / "b.py"}) == {"exptrack.b"}

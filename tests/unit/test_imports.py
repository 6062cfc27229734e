"""Import direction serving/training -> infra -> router: router/ imports no web, tracking, infra, serving or training
code; infra/ (settings, store) imports neither serving/ nor training/; serving/ and training/ never import each
other. No cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "router": {"fastapi", "starlette", "uvicorn", "mlflow", "infra", "serving", "training"},
    "infra": {"fastapi", "starlette", "uvicorn", "mlflow", "serving", "training"},
    "serving": {"training"},
    "training": {"serving", "fastapi", "starlette", "uvicorn"},
}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_direction(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no Python files under {package}/"
    bad = {
        str(f.relative_to(ROOT)): sorted(imported_roots(f) & FORBIDDEN[package])
        for f in files
        if imported_roots(f) & FORBIDDEN[package]
    }
    assert not bad, f"forbidden imports: {bad}"


def test_checker_sees_nested_imports(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from mlflow.tracking import MlflowClient\n    import fastapi.routing\n")
    assert imported_roots(f) == {"mlflow", "fastapi"}


PROJECT = ("router", "training", "serving", "infra", "bench")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules a file imports (top-level or nested), each resolved to the longest known module name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def project_graph() -> dict[str, set[str]]:
    files = [f for package in PROJECT for f in sorted((ROOT / package).rglob("*.py")) if "migrations" not in f.parts]
    modules = {module_name(f) for f in files}
    graph = {}
    for f in files:
        name = module_name(f)
        # A package's own __init__ is implied by importing any of its modules; only module-to-module edges count.
        graph[name] = {m for m in project_imports(f, modules) if m != name and not name.startswith(m + ".")}
    return graph


def test_no_import_cycle() -> None:
    graph = project_graph()
    assert "router.features" in graph, "the checker found no project modules"
    assert not import_cycles(graph), f"import cycles: {import_cycles(graph)}"


def test_cycle_checker_finds_a_cycle() -> None:
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []

"""The package's import graph: no cycles, a core (`speculation`) that depends on no drafter, and no upstream in the core.

Read from the source (every import, lazy ones inside functions included; `if TYPE_CHECKING:` blocks
excluded, since they never run), so the test needs neither verl nor vLLM installed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "respec_verl"
UPSTREAM = ("verl", "vllm", "ray")
# The backend-neutral core: the engine and its drafter interface, and the drafters that implement it
CORE = ("respec_verl.speculation", "respec_verl.drafter")


def module_files() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _runtime_nodes(tree: ast.AST):
    """Every node of `tree` outside `if TYPE_CHECKING:` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def imported_names(path: Path, modules: dict[str, Path] | None = None) -> set[str]:
    """Absolute module names that `path` imports at run time; `from a import b` is a.b where that is a module."""
    modules = modules or {}
    names = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                names.add(submodule if submodule in modules else node.module)
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports."""
    modules = module_files()
    return {name: (imported_names(path, modules) & modules.keys()) - {name} for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in sorted(graph.get(node, ())):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def package_graph(graph: dict[str, set[str]], depth: int) -> dict[str, set[str]]:
    def cut(name: str) -> str:
        return ".".join(name.split(".")[:depth])

    out: dict[str, set[str]] = {}
    for name, deps in graph.items():
        out.setdefault(cut(name), set()).update(cut(d) for d in deps if cut(d) != cut(name))
    return out


def test_no_module_imports_itself_through_others():
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("depth", [2, 3])
def test_no_two_packages_import_each_other(depth):
    assert cycles(package_graph(import_graph(), depth)) == []


def test_the_engine_knows_drafters_only_through_its_interface():
    spec = {name: deps for name, deps in import_graph().items() if name.startswith("respec_verl.speculation")}
    assert {d for deps in spec.values() for d in deps if d.startswith("respec_verl.drafter")} == set()


def test_the_core_imports_no_upstream():
    modules = module_files()
    found = {
        name: sorted(n for n in imported_names(path) if n.split(".")[0] in UPSTREAM)
        for name, path in modules.items() if name.startswith(CORE)
    }
    assert {name: names for name, names in found.items() if names} == {}


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]

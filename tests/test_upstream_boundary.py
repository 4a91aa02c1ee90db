"""Private upstream names stay in `respec_verl/upstream/`: a new one elsewhere fails here, naming the line.

Read from the source (no verl or vLLM needed). Outside the boundary modules the package may not:
import a private name or a private module of verl, vLLM or Ray; read, call or replace an underscore
attribute that the package does not define itself (or that a boundary module declares as upstream's);
name one in `getattr`/`setattr`/`hasattr`; override a private method of an upstream class unless
`OVERRIDDEN_PRIVATE_METHODS` declares it; or walk vLLM's engine internals
(`llm_engine.engine_core`). Our own private names on upstream subclasses start with `_respec`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from respec_verl.upstream import ray_compat, verl_compat, vllm_compat

PACKAGE = Path(__file__).resolve().parents[1] / "respec_verl"
BOUNDARY = PACKAGE / "upstream"
UPSTREAM = ("verl", "vllm", "ray", "transfer_queue")
ENGINE_CHAINS = (("llm_engine", "engine_core"),)
# CPython's, not an upstream's: `import_hooks` reads `module.__spec__._initializing` as importlib does
PYTHON_PRIVATE = {"_initializing"}
# (file relative to the package, what it uses) still to be routed through the boundary: none
PENDING: set[tuple[str, str]] = set()


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _declared_upstream_names() -> set[str]:
    """Private names the boundary modules declare as upstream's."""
    names = set(verl_compat.QAT_FLAGS)
    for module in (verl_compat, vllm_compat):
        for table in ("OVERRIDDEN_PRIVATE_METHODS", "PATCHED_METHODS", "CALLED_PRIVATE_METHODS"):
            for methods in getattr(module, table, {}).values():
                names.update(methods)
        for members in module.PRIVATE_MEMBERS.values():
            names.update(members)
    names.update(name.attr for name, _ in vllm_compat.MIRRORED.values())
    names.update(name.attr for name, _ in ray_compat.MIRRORED.values())
    return {n for n in names if _private(n)}


def _overridden() -> set[str]:
    return {m for methods in verl_compat.OVERRIDDEN_PRIVATE_METHODS.values() for m in methods}


def _package_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if BOUNDARY not in p.parents)


def _own_private_names(trees: dict[Path, ast.AST]) -> set[str]:
    """Private names the package defines: functions, classes, variables, arguments, `self._x = ...`."""
    own = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                own.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                own.add(node.id)
            elif isinstance(node, ast.arg):
                own.add(node.arg)
            elif isinstance(node, ast.alias) and node.asname:
                own.add(node.asname)
            elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                  and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                own.add(node.attr)
    return {n for n in own if _private(n)} - _declared_upstream_names()


def _ours(name: str, own: set[str]) -> bool:
    return name in own or name.startswith("_respec") or name in PYTHON_PRIVATE


def _upstream_imported(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in UPSTREAM:
            names.update(alias.asname or alias.name for alias in node.names)
    return names


def _is_super_call(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super"


def _chain(node: ast.Attribute) -> tuple[str, ...]:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return tuple(reversed(parts))


def violations(path: Path, tree: ast.AST, own: set[str]) -> list[tuple[str, str]]:
    """(what, where) for each private upstream use in `tree` outside the boundary."""
    found, overridden, upstream_bases = [], _overridden(), _upstream_imported(tree)
    for node in ast.walk(tree):
        where = f"{path.relative_to(PACKAGE)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for module in modules:
                if module.split(".")[0] in UPSTREAM and any(_private(p) for p in module.split(".")):
                    found.append((module, where))
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UPSTREAM:
                found += [(f"{node.module}.{a.name}", where) for a in node.names if _private(a.name)]
        elif isinstance(node, ast.Attribute):
            if _private(node.attr) and not _ours(node.attr, own):
                if not (_is_super_call(node.value) and node.attr in overridden):
                    found.append((node.attr, where))
            chain = _chain(node)
            for pair in ENGINE_CHAINS:
                if chain[-len(pair):] == pair:
                    found.append((".".join(pair), where))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "setattr", "hasattr", "delattr") and len(node.args) > 1):
            name = node.args[1]
            if isinstance(name, ast.Constant) and isinstance(name.value, str) and _private(name.value):
                if not _ours(name.value, own):
                    found.append((name.value, where))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            parts = node.value.split(".")
            if parts[0] in UPSTREAM and len(parts) > 1 and all(p.isidentifier() for p in parts):
                if any(_private(p) for p in parts):
                    found.append((node.value, where))
        elif isinstance(node, ast.ClassDef):
            bases = {b.id for b in node.bases if isinstance(b, ast.Name)}
            if bases & upstream_bases:
                for item in node.body:
                    if (isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and _private(item.name)
                            and not item.name.startswith("_respec") and item.name not in overridden):
                        found.append((f"{node.name}.{item.name} (override)", where))
    return found


def all_violations() -> list[tuple[str, str]]:
    trees = {p: ast.parse(p.read_text(encoding="utf-8")) for p in _package_files()}
    own = _own_private_names(trees)
    found = []
    for path, tree in trees.items():
        for what, where in violations(path, tree, own):
            if (where.rsplit(":", 1)[0], what) not in PENDING:
                found.append((what, where))
    return found


def test_private_upstream_names_are_used_only_through_the_boundary_modules():
    found = all_violations()
    assert not found, "private upstream names outside respec_verl/upstream/ (add an accessor there):\n" + "\n".join(
        f"  {where}: {what}" for what, where in found
    )


def test_pending_entries_are_still_needed():
    # an allow-list entry that no longer matches anything goes, so it cannot hide a new use
    trees = {p: ast.parse(p.read_text(encoding="utf-8")) for p in _package_files()}
    own = _own_private_names(trees)
    seen = {(where.rsplit(":", 1)[0], what) for path, tree in trees.items()
            for what, where in violations(path, tree, own)}
    assert PENDING <= seen, f"stale PENDING entries: {sorted(PENDING - seen)}"


@pytest.mark.parametrize("source, expected", [
    ("from vllm.v1.sample.sampler import _SAMPLING_EPS\n", "vllm.v1.sample.sampler._SAMPLING_EPS"),
    ("import ray._private.worker\n", "ray._private.worker"),
    ("def f(rollout):\n    return rollout._execute_method('x')\n", "_execute_method"),
    ("def f(llm):\n    return llm.llm_engine.engine_core.engine_core.scheduler\n", "llm_engine.engine_core"),
    ("def f(e):\n    return getattr(e, '_is_qat_model', False)\n", "_is_qat_model"),
    ("from vllm.v1.core.sched.scheduler import Scheduler\nclass S(Scheduler):\n    def _update_after_schedule(self):\n"
     "        pass\n", "S._update_after_schedule (override)"),
])
def test_the_guard_catches_each_kind_of_use(source, expected):
    path = PACKAGE / "vllm_glue" / "example.py"
    found = [what for what, _ in violations(path, ast.parse(source), own=set())]
    assert expected in found


def test_the_guard_allows_our_own_names_and_declared_overrides():
    source = ("from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync\n"
              "class T(PPOTrainerSync):\n"
              "    def _update_actor(self, batch, metrics):\n"
              "        return super()._update_actor(batch, metrics)\n"
              "    def _respec_extra(self):\n"
              "        self._respec_state = 1\n")
    tree = ast.parse(source)
    assert violations(PACKAGE / "verl_glue" / "example.py", tree, own=_own_private_names({PACKAGE: tree})) == []

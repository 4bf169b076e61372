"""The layering of the package: the command line (wmquant.cli, wmquant.commands) drives the library,
and no library module imports it; and no two modules import each other, not even through imports
deferred into functions (a cycle that only a late import hides is still a cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

import wmquant

PACKAGE = Path(wmquant.__file__).resolve().parent
CLI_MODULES = ("wmquant.cli", "wmquant.__main__", "wmquant.commands")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every wmquant module `name` imports, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in modules]
            targets = subs + ([target] if len(subs) < len(node.names) else [])
        else:
            continue
        for target in targets:
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in modules and target != name and target.startswith("wmquant"):
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _is_cli(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in CLI_MODULES)


def test_no_library_module_imports_the_command_line():
    offenders = {name: sorted(d for d in deps if _is_cli(d)) for name, deps in _graph().items() if not _is_cli(name)}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_every_command_lives_in_wmquant_commands():
    from wmquant.cli import FLAG_COMMANDS, HYDRA_COMMANDS

    for module, _, _ in (*HYDRA_COMMANDS.values(), *FLAG_COMMANDS.values()):
        assert module.startswith("wmquant.commands."), module


def test_there_are_no_import_cycles():
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in graph[node]:
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
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert cycles == []


def test_the_checker_sees_imports_inside_functions(tmp_path):
    # the check itself must find a deferred import (else the cycle test could not fail)
    source = "def f():\n    from .b import x\n"
    path = tmp_path / "a.py"
    path.write_text(source)
    assert _imports("wmquant.study.a", path, {"wmquant.study.a": path, "wmquant.study.b": path}) == {"wmquant.study.b"}

"""The package's import graph has no circle: every module imports only modules below it.

Both top-level and function-local imports count: a function-local import keeps ``--help`` instant by deferring
torch and diffusers, but it must not be a way round a circle (issue 23). The graph is read from the source
(``ast``), so the check costs no import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import verifier

PACKAGE = Path(verifier.__file__).parent


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The package's module that ``name`` (a module or a name inside one) belongs to."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its source."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            targets = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(owner for target in targets if target.split(".")[0] == "verifier"
                     and (owner := _owner(target, modules)) not in (None, name))
    return found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_the_package_has_no_import_circle():
    modules = module_names()
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    assert len(graph) > 40 and sum(map(len, graph.values())) > 100  # the graph was read, not empty
    found = circles(graph)
    assert not found, "import circles (top-level and function-local imports): " + "; ".join(
        " <-> ".join(component) for component in found)


def test_the_check_sees_a_circle_held_open_by_a_function_local_import(tmp_path):
    package = tmp_path / "verifier"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "low.py").write_text("def f():\n    from verifier.high import g\n    return g\n")
    (package / "high.py").write_text("from verifier import low\n")
    modules = {"verifier": package / "__init__.py", "verifier.low": package / "low.py",
               "verifier.high": package / "high.py"}
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    assert graph["verifier.high"] == {"verifier.low"}  # ``from verifier import low`` names the submodule
    assert circles(graph) == [["verifier.high", "verifier.low"]]

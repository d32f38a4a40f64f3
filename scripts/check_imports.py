#!/usr/bin/env python3
"""Fail when perfkit's modules import each other in a cycle, deferred (function-level) imports included.

    python scripts/check_imports.py          # `make lint` runs it

A deferred import hides a cycle from Python but not from a reader: each edge below is any
``import perfkit.x`` / ``from perfkit.x import ...`` anywhere in a module, ``TYPE_CHECKING`` blocks
included. A package's ``__init__`` re-exporting its own modules is not a cycle with them.

It also fails on a perfkit import inside a function that does not say why it is there: a deferral
is for keeping ``import perfkit`` and the commands' ``--help`` free of torch and Lightning, and a
comment on the import, or on the line just above its block, says so.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "perfkit"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The perfkit modules ``path`` imports (a name imported from a package counts as its module
    when one exists by that name)."""
    found: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name.startswith(PACKAGE):
                found.add(name)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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


def unexplained_deferrals(path: Path) -> list[str]:
    """``path:line`` of each function-level perfkit import with no comment saying why it is deferred."""
    text = path.read_text()
    lines = text.splitlines()
    found = []
    for function in ast.walk(ast.parse(text)):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        imports = [n for n in ast.walk(function) if isinstance(n, ast.Import | ast.ImportFrom)]
        in_import = {line for n in imports for line in range(n.lineno, (n.end_lineno or n.lineno) + 1)}
        for node in imports:
            module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            if not (module or "").startswith(PACKAGE):
                continue
            above = node.lineno - 1  # 1-based line numbers: walk up over the block of imports
            while above in in_import and "#" not in lines[above - 1]:
                above -= 1
            said = above >= 1 and "#" in lines[above - 1]
            if not said and not any("#" in line for line in lines[node.lineno - 1 : node.end_lineno]):
                found.append(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{node.lineno}")
    return found


def main() -> int:
    files = sorted((ROOT / PACKAGE).rglob("*.py"))
    unexplained = [where for path in files for where in unexplained_deferrals(path)]
    for where in unexplained:
        print(
            f"{where}: a perfkit import inside a function without a comment saying why it is not at the top",
            file=sys.stderr,
        )
    modules = {module_name(path) for path in files}
    graph: dict[str, set[str]] = {}
    for path in files:
        name = module_name(path)
        # a package re-exporting its submodules, and submodules importing their package's names
        graph[name] = {
            target
            for target in imports_of(path, modules)
            if target != name and not target.startswith(name + ".") and not name.startswith(target + ".")
        }
    found = cycles(graph)
    for component in found:
        edges = [f"{a} -> {b}" for a in component for b in sorted(graph[a]) if b in component]
        print(f"import cycle among {', '.join(component)}: {'; '.join(edges)}", file=sys.stderr)
    return 1 if found or unexplained else 0


if __name__ == "__main__":
    sys.exit(main())

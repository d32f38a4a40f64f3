#!/usr/bin/env python3
"""Fail when perfkit's modules import each other in a cycle, deferred (function-level) imports included.

    python scripts/check_imports.py          # `make lint` runs it

A deferred import hides a cycle from Python but not from a reader: each edge below is any
``import perfkit.x`` / ``from perfkit.x import ...`` anywhere in a module, ``TYPE_CHECKING`` blocks
included. A package's ``__init__`` re-exporting its own modules is not a cycle with them.
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


def main() -> int:
    files = sorted((ROOT / PACKAGE).rglob("*.py"))
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
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())

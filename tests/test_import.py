"""Guard rails: importing perfkit stays cheap and side-effect free."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def _python(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.strip()


def test_import_perfkit_is_lean() -> None:
    out = _python(
        "import sys, time; t = time.perf_counter(); import perfkit; dt = time.perf_counter() - t; "
        "print(dt, 'wandb' in sys.modules, 'torch' in sys.modules, 'lightning' in sys.modules)"
    )
    seconds, *imported = out.split()
    assert float(seconds) < 2.0
    assert imported == ["False", "False", "False"]


def test_perfkit_modules_do_not_start_cuda_or_wandb() -> None:
    out = _python(
        "import sys, torch, perfkit.train, perfkit.data, perfkit.models, perfkit.callbacks; "
        "from perfkit.models import ImageClassifier, SmallCNN; "
        "ImageClassifier(SmallCNN, (1, 28, 28), 10); "
        "print(torch.cuda.is_initialized(), 'wandb' in sys.modules)"
    )
    assert out.split() == ["False", "False"]


def test_lazy_attributes() -> None:
    import perfkit

    assert perfkit.__version__
    assert issubclass(perfkit.ConfigError, ValueError)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        perfkit.nope  # noqa: B018


def test_no_import_cycles_even_deferred() -> None:
    """`make lint` runs the same check; a cycle hidden in a function-level import counts."""
    checker = Path(__file__).resolve().parent.parent / "scripts" / "check_imports.py"
    result = subprocess.run([sys.executable, str(checker)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_the_import_check_finds_a_cycle(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "check_imports", Path(__file__).resolve().parent.parent / "scripts" / "check_imports.py"
    )
    assert spec is not None and spec.loader is not None
    checker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checker)
    graph = {
        "perfkit.a": {"perfkit.b"},
        "perfkit.b": {"perfkit.c"},
        "perfkit.c": {"perfkit.a"},
        "perfkit.d": set(),
    }
    assert checker.cycles(graph) == [["perfkit.a", "perfkit.b", "perfkit.c"]]


def test_the_import_check_wants_a_reason_for_a_deferred_import(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "check_imports", Path(__file__).resolve().parent.parent / "scripts" / "check_imports.py"
    )
    assert spec is not None and spec.loader is not None
    checker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checker)
    module = tmp_path / "m.py"
    module.write_text(
        "def silent():\n"
        "    import os\n"
        "    from perfkit.run import write_json\n"
        "    from perfkit.errors import (\n"
        "        ConfigError,\n"
        "    )\n"
        "\n"
        "def said():\n"
        "    # here, not at the top: keeps --help free of torch\n"
        "    from perfkit.build import build\n"
        "    from perfkit.cli import (\n"
        "        command,\n"
        "    )\n"
        "    from perfkit.run import RunDirectory  # and so is this\n"
    )
    assert checker.unexplained_deferrals(module) == [f"{module}:3", f"{module}:4"]


def test_no_function_in_perfkit_is_over_60_lines() -> None:
    """Entry points stay thin: a long function is split into named steps."""
    import ast

    root = Path(__file__).parents[1] / "perfkit"
    long = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > 60:
                    long.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, long


def test_no_module_in_perfkit_is_over_400_lines() -> None:
    """One idea per module: a module that grows past 400 lines is split along its seams."""
    root = Path(__file__).parents[1] / "perfkit"
    long = [
        f"{path.relative_to(root.parent)} ({count} lines)"
        for path in sorted(root.rglob("*.py"))
        if (count := len(path.read_text().splitlines())) > 400
    ]
    assert not long, long


def test_test_files_mirror_modules_and_stay_short() -> None:
    """A test file per module (or package part), each under 400 lines; shared code in tests/helpers."""
    root = Path(__file__).parent
    long = [
        f"{path.name} ({count} lines)"
        for path in sorted(root.glob("test_*.py"))
        if (count := len(path.read_text().splitlines())) > 400
    ]
    assert not long, long
    import ast

    conftest = ast.parse((root / "conftest.py").read_text())
    helpers = [
        node.name
        for node in conftest.body
        if isinstance(node, ast.FunctionDef | ast.ClassDef)
        and not any("fixture" in ast.unparse(decorator) for decorator in getattr(node, "decorator_list", []))
    ]
    assert not helpers, f"conftest.py holds fixtures only; move {helpers} to tests/helpers"


def test_every_package_ships_in_the_wheel() -> None:
    """pyproject.toml lists perfkit's packages by hand: a new sub-package missing there would work in
    an editable install and be absent from a wheel."""
    import tomllib

    root = Path(__file__).parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "perfkit").rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)

"""The docs site's build fails on a broken reference (CI builds the real site with `make docs`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def _build(tmp_path: Path, changelog: str | None) -> subprocess.CompletedProcess[str]:
    """Build a copy of docs/ with the repository's mkdocs.yml, optionally with another changelog page."""
    docs = tmp_path / "docs"
    shutil.rmtree(docs, ignore_errors=True)
    shutil.copytree(ROOT / "docs", docs)
    if changelog is not None:
        (docs / "changelog.md").write_text(changelog)
    config = tmp_path / "mkdocs.yml"
    config.write_text(
        f"INHERIT: {ROOT / 'mkdocs.yml'}\ndocs_dir: {docs}\nsite_dir: {tmp_path / 'site'}\n"
        f"hooks: [{ROOT / 'docs' / 'hooks.py'}]\n"  # relative paths would resolve against this copy
    )
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


@pytest.mark.slow  # a second strict docs build (make docs runs the first in CI)
def test_docs_build_fails_on_a_broken_reference(tmp_path: Path) -> None:
    assert _build(tmp_path, None).returncode == 0  # the site as it is builds cleanly
    broken = _build(tmp_path, "# Changelog\n\nSee [the missing page](nowhere.md).\n")
    assert broken.returncode != 0
    assert "contains a link 'nowhere.md', but the target is not found" in broken.stderr


def test_the_results_page_is_generated_from_every_committed_report() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    assert spec is not None and spec.loader is not None
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    page = hooks.results_markdown()
    results = ROOT / "benchmarks" / "results"
    reports = [p for p in results.rglob("*.md") if p.name != "README.md"]
    for report in reports:
        assert f"`{report.relative_to(results).as_posix()}`" in page, report
        table = next(line for line in report.read_text().splitlines() if line.startswith("| "))
        assert table in page  # the measured table itself, not a copy kept elsewhere
    headings = [line for line in page.splitlines() if line.startswith("#")]
    assert not [h for h in headings if "(issue" in h]

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

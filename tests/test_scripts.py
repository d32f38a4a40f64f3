"""scripts/: each has --help and fails clearly on missing arguments."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).parents[1] / "scripts"


@pytest.mark.parametrize("script", sorted(SCRIPTS.glob("*.sh")), ids=lambda p: p.name)
def test_script_help_and_missing_arguments(script: Path) -> None:
    shown = subprocess.run([script, "--help"], capture_output=True, text=True, check=False)
    assert shown.returncode == 0 and shown.stdout.startswith("usage:")
    missing = subprocess.run([script], capture_output=True, text=True, check=False)
    assert missing.returncode == 2 and "error:" in missing.stderr


def test_tensorboard_script_rejects_a_missing_run_dir(tmp_path: Path) -> None:
    result = subprocess.run(
        [SCRIPTS / "tensorboard.sh", str(tmp_path / "nope")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2 and "is not a directory" in result.stderr

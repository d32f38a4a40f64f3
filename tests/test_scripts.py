"""scripts/: each has --help and fails clearly on missing arguments."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

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


def test_bench_gpu_script_rejects_an_unknown_preset() -> None:
    result = subprocess.run([SCRIPTS / "bench_gpu.sh", "huge"], capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "error: unknown PRESET 'huge'; allowed: quick, full, gpu, parity, startup, tests"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_bench_gpu_script_refuses_a_machine_without_cuda() -> None:
    result = subprocess.run([SCRIPTS / "bench_gpu.sh", "quick"], capture_output=True, text=True, check=False)
    assert result.returncode == 2 and "error: no CUDA device on this machine" in result.stderr


def test_docker_build_context_holds_what_the_dockerfile_copies() -> None:
    """.dockerignore is an allowlist: every COPY source of Dockerfile.gpu must be on it."""
    root = SCRIPTS.parent
    allowed = {
        line.removeprefix("!").rstrip("/")
        for line in (root / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    copied = [
        source.rstrip("/").removeprefix("./")
        for line in (root / "Dockerfile.gpu").read_text().splitlines()
        if line.startswith("COPY ") and "--from=" not in line
        for source in line.split()[1:-1]
    ]
    assert copied and set(copied) <= allowed
    assert all((root / source).exists() for source in copied)

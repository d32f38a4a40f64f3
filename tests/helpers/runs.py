"""Running perfkit's commands in tests: the quiet CPU overrides, a fresh interpreter, a readable failure."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

# a short, quiet CPU run; tests add the overrides they are about
FAST = [
    "accelerator=cpu",
    "debug=fast",
    "trainer.enable_progress_bar=false",
]

ComposeTrain = Callable[..., DictConfig]
CLI = Callable[..., tuple[int, str]]


def run_cli(
    *args: str,
    cwd: Path,
    timeout: float = 300,
    module: str = "perfkit.train",
    extra_env: dict[str, str] | None = None,
) -> tuple[int, str, str]:
    """Run ``python -m <module>`` (perfkit.train by default) in a fresh interpreter, as a user would."""
    # the repository root on the path, so configs may name test helpers (tests.toy_models...)
    root = str(Path(__file__).resolve().parents[2])
    pythonpath = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "0", "PYTHONPATH": pythonpath}
    env.update(extra_env or {})
    completed = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return completed.returncode, completed.stdout, completed.stderr


def run_failure(err: str, lines: int = 60) -> str:
    """An assertion message for a failed :func:`run_cli`: stderr's last line first (pytest's summary
    shows only the first), then its last ``lines`` lines."""
    tail = err.strip().splitlines()[-lines:] or ["(no stderr)"]
    return "\n".join([tail[-1], "--- the end of stderr:", *tail])


def free_port() -> int:
    """A TCP port nothing listens on now (for a DDP master or a TensorBoard server)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])

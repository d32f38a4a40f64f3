"""Cold start in a fresh process: import the runtime, load the artifact, answer one call
(``perfkit/serve_worker.py``, which imports nothing of perfkit), with that process's peak memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from perfkit.serving.candidate import Candidate, eager_of, error_summary
from perfkit.serving.report import ServeRow

WORKER = Path(__file__).parents[1] / "serve_worker.py"


COLD_START_TIMEOUT_S = 600


def _cold_start(
    candidate: Candidate,
    row: ServeRow,
    one: tuple[torch.Tensor, ...],
    threads: int,
    times: int,
    scratch: Path,
    device: torch.device,
) -> None:
    import numpy as np

    inputs = scratch / f"{len(one)}-inputs.npz"
    if not inputs.exists():
        np.savez(inputs, **{f"input_{i}": t.numpy() for i, t in enumerate(one)})  # type: ignore[arg-type]
    path = candidate.path
    environment_vars = dict(os.environ)
    # an artifact loads in an isolated interpreter (-I: no PYTHONPATH, no user site); a pickled module
    # needs its classes, so that process gets this one's import path
    command = [sys.executable, "-I", "-c", WORKER.read_text()]
    if path is None:
        path = str(scratch / f"{abs(hash(candidate.name))}.pt")
        try:
            torch.save(eager_of(candidate.module), path)
        except Exception as error:
            row.errors.append(
                f"cold start not measured: the module cannot be pickled for a fresh process ({error_summary(error)})"
            )
            return
        environment_vars["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        command = [sys.executable, "-c", WORKER.read_text()]
    results = []
    for _ in range(times):
        outcome = _one_cold_start(
            [*command, candidate.kind, path, str(inputs), str(threads), str(device)],
            environment_vars,
            scratch,
        )
        if isinstance(outcome, str):
            row.errors.append(f"cold start failed: {outcome}")
            return
        results.append(outcome)
    results.sort(key=lambda r: r[0])
    wall, breakdown = results[len(results) // 2]
    row.cold_start_s = wall
    row.peak_rss_mb = breakdown.pop("peak_rss_mb")
    row.torch_imported = breakdown.pop("torch_imported")
    row.peak_cuda_mb = breakdown.pop("peak_cuda_mb", None)
    row.provider = breakdown.pop("provider", None)
    row.cold_start_breakdown = breakdown


def _one_cold_start(
    command: list[str], env: dict[str, str], scratch: Path
) -> tuple[float, dict[str, Any]] | str:
    """(wall seconds, the worker's figures), or why it failed."""
    started = time.perf_counter()
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=env,
            timeout=COLD_START_TIMEOUT_S,
            check=False,
            cwd=scratch,
        )
    except subprocess.TimeoutExpired:
        return f"no answer within {COLD_START_TIMEOUT_S} s (the process was stopped)"
    wall = time.perf_counter() - started
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        return lines[-1] if lines else f"exit {done.returncode}"
    return wall, json.loads(done.stdout.strip().splitlines()[-1])

"""Launchers: torchrun (single and multi-node on one machine) and SLURM (srun simulated), the run
directory every rank and sweep job shares."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest

from perfkit.config import ConfigError
from perfkit.distributed import check_shared_run_dir
from tests.helpers import FAST, free_port

ROOT = Path(__file__).resolve().parents[1]


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def test_torchrun_ranks_must_share_a_run_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    from hydra.core.hydra_config import HydraConfig

    for name, value in {
        "RANK": "1",
        "GROUP_RANK": "0",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "WORLD_SIZE": "2",
        "TORCHELASTIC_RUN_ID": "none",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29500",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: _FakeHydra()))
    with pytest.raises(
        ConfigError, match="under torchrun every rank needs the same run directory: set PERFKIT_RUN_ID"
    ):
        check_shared_run_dir()
    monkeypatch.setenv("PERFKIT_RUN_ID", "exp1")
    check_shared_run_dir()


def test_slurm_sweep_jobs_share_the_launchers_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under the submitit launcher every rank of a sweep job gets the job's directory from Hydra."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    for name, value in {"SLURM_NTASKS": "4", "SLURM_PROCID": "2", "SLURM_JOB_NAME": "perfkit"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: _FakeHydra()))
    with pytest.raises(ConfigError, match="under SLURM every rank needs the same run directory"):
        check_shared_run_dir()
    monkeypatch.setattr(_FakeHydra, "mode", RunMode.MULTIRUN)
    check_shared_run_dir()


class _FakeHydra:
    mode = None  # hydra.types.RunMode.RUN or MULTIRUN

    class overrides:  # noqa: N801 - mirrors HydraConfig's attribute
        hydra: ClassVar[list[str]] = []


@pytest.mark.distributed
def test_two_torchrun_nodes_on_one_machine(tmp_path: Path) -> None:
    """Node ranks 0 and 1, two processes each, rendezvous on 127.0.0.1: world size 4."""
    env = {
        **os.environ,
        "NNODES": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "PERFKIT_RUN_ID": "two-nodes",
        "PYTHON": sys.executable,
        "PYTHONWARNINGS": "ignore",
        "PYTHONPATH": str(ROOT),
    }
    nodes = [
        subprocess.Popen(
            [ROOT / "scripts" / "torchrun.sh", "2", *FAST, "logger=none", "data.batch_size=16"],
            cwd=tmp_path,
            env={**env, "NODE_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=400)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    run_dir = tmp_path / "outputs" / "train" / "runs" / "two-nodes"
    metrics = _metrics(run_dir)
    assert metrics["world_size"] == 4
    assert metrics["train_samples_per_epoch"] == [4 * 5 * 16]
    # one shared run directory; no rank made its own
    assert [p.name for p in (tmp_path / "outputs" / "train" / "runs").iterdir()] == ["two-nodes"]


@pytest.mark.distributed
def test_slurm_template_under_a_simulated_srun(tmp_path: Path) -> None:
    """scripts/slurm.sbatch as SLURM runs it: srun starts SLURM_NTASKS copies with SLURM_PROCID set."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text(
        "#!/usr/bin/env bash\n"
        "pids=()\n"
        "for ((i = 0; i < SLURM_NTASKS; i++)); do\n"
        '  SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_NODEID=0 "$@" & pids+=($!)\n'
        "done\n"
        'rc=0; for pid in "${pids[@]}"; do wait "$pid" || rc=$?; done; exit $rc\n'
    )
    srun.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHON": sys.executable,
        "PYTHONWARNINGS": "ignore",
        "PYTHONPATH": str(ROOT),
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "perfkit-test",
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_NNODES": "1",
        "SLURM_NODELIST": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    result = subprocess.run(
        ["bash", ROOT / "scripts" / "slurm.sbatch", *FAST, "logger=none", "data.batch_size=16"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = _metrics(tmp_path / "outputs" / "train" / "runs" / "slurm-4242")
    assert metrics["world_size"] == 2 and metrics["train_samples_per_epoch"] == [2 * 5 * 16]

"""perfkit.run: the run directory (reserved before writing, never shared, never overwritten), resuming,
and the JSON it writes."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from perfkit.config import ConfigError
from perfkit.run import RunDirectory, guard_run_dir, resume_checkpoint, write_json
from tests.helpers import CLI, run_failure


def test_a_run_directory_held_by_a_live_process_is_refused(tmp_path: Path) -> None:
    (tmp_path / ".perfkit-run.lock").write_text(f"{os.getppid()} {socket.gethostname()}\n")
    with pytest.raises(ConfigError, match=r"in use by another perfkit run \(pid"):
        RunDirectory(tmp_path)


def test_a_lock_from_another_machine_is_respected(tmp_path: Path) -> None:
    (tmp_path / ".perfkit-run.lock").write_text("123 some-other-host\n")
    with pytest.raises(ConfigError, match="on some-other-host"):
        RunDirectory(tmp_path)


def test_a_lock_being_written_is_respected(tmp_path: Path) -> None:
    (tmp_path / ".perfkit-run.lock").write_text("")
    with pytest.raises(ConfigError, match="a run that is starting"):
        RunDirectory(tmp_path)


def test_a_killed_runs_lock_is_taken_over_and_released(tmp_path: Path) -> None:
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    (tmp_path / ".perfkit-run.lock").write_text(f"{finished.stdout.strip()} {socket.gethostname()}\n")
    reservation = RunDirectory(tmp_path)
    assert (tmp_path / ".perfkit-run.lock").read_text().split()[0] == str(os.getpid())
    reservation.release()
    assert not (tmp_path / ".perfkit-run.lock").exists()


def test_release_leaves_another_process_lock_alone(tmp_path: Path) -> None:
    reservation = RunDirectory(tmp_path)
    (tmp_path / ".perfkit-run.lock").write_text(f"{os.getppid()} {socket.gethostname()}\n")
    reservation.release()
    assert (tmp_path / ".perfkit-run.lock").exists()


def test_a_refused_directory_keeps_no_lock(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match="never overwrites"):
        RunDirectory(tmp_path)
    assert not (tmp_path / ".perfkit-run.lock").exists()


def test_json_files_never_hold_nan(tmp_path: Path) -> None:
    write_json(tmp_path / "m.json", {"loss": math.nan, "x": [math.inf, 1.0], "n": {"y": -math.inf}})

    def refuse(constant: str) -> None:
        raise AssertionError(constant)

    assert json.loads((tmp_path / "m.json").read_text(), parse_constant=refuse) == {
        "loss": None,
        "x": [None, 1.0],
        "n": {"y": None},
    }


def test_an_interrupted_run_is_refused_unless_resumed(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(
        ConfigError, match="holds checkpoints of an interrupted run; continue it with resume=auto"
    ):
        guard_run_dir(tmp_path)
    guard_run_dir(tmp_path, resume=True)
    assert resume_checkpoint(tmp_path) == tmp_path / "checkpoints" / "last.ckpt"
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(
        ConfigError, match=r"already holds a finished run \(metrics.json\): there is nothing to resume"
    ):
        guard_run_dir(tmp_path, resume=True)
    assert resume_checkpoint(tmp_path / "fresh") is None


@pytest.mark.parametrize(
    ("env", "launcher"),
    [
        ({"RANK": "1"}, None),  # left over from torchrun debugging
        ({"LOCAL_RANK": "1"}, None),  # or set in a Kubernetes pod
        ({"RANK": "1", "LOCAL_RANK": "1", "TORCHELASTIC_RUN_ID": "x", "WORLD_SIZE": "2"}, "torchrun"),
        ({"SLURM_PROCID": "1", "SLURM_NTASKS": "2"}, "SLURM"),
        ({"LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_PORT": "29500"}, "Lightning"),
        ({"SLURM_PROCID": "1", "SLURM_NTASKS": "1"}, None),
    ],
)
def test_a_lone_rank_variable_is_not_a_launched_child(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], launcher: str | None
) -> None:
    from perfkit.run import is_launching_process, launched_by, stray_rank_variables

    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "TORCHELASTIC_RUN_ID", "WORLD_SIZE", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert launched_by() == launcher
    assert is_launching_process() == (launcher is None)
    assert bool(stray_rank_variables()) == (launcher is None)


@pytest.mark.slow
def test_a_stray_rank_never_lets_a_run_overwrite_a_finished_one(tmp_path: Path) -> None:
    from tests.helpers import run_cli, run_failure

    args = ("debug=fast", "logger=none", "accelerator=cpu", f"hydra.run.dir={tmp_path / 'run'}")
    code, _, err = run_cli(*args, cwd=tmp_path, extra_env={"RANK": "1"})
    assert code == 0, run_failure(err)
    assert "RANK=1 is set, but no launcher" in err
    before = (tmp_path / "run" / "metrics.json").read_bytes()
    code, _, err = run_cli(*args, cwd=tmp_path, extra_env={"RANK": "1", "LOCAL_RANK": "1"})
    assert code == 2 and "already holds an earlier run (metrics.json)" in err.strip().splitlines()[-1]
    assert (tmp_path / "run" / "metrics.json").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


def test_resume_without_last_checkpoint_is_refused_not_restarted(tmp_path: Path) -> None:
    from perfkit.run import resume_checkpoint

    assert resume_checkpoint(tmp_path) is None  # nothing yet: a fresh start, said in the log
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "best.ckpt").write_bytes(b"x")
    with pytest.raises(
        ConfigError, match=r"has no last\.ckpt \(only best\.ckpt\), so the run cannot continue"
    ):
        resume_checkpoint(tmp_path)


@pytest.mark.slow
def test_ctrl_c_during_training_exits_130_and_says_so(tmp_path: Path) -> None:
    import signal
    import time

    root = str(Path(__file__).resolve().parent.parent)
    process = subprocess.Popen(
        [sys.executable, "-m", "perfkit.train", "logger=none", "trainer.max_epochs=50", "hydra.run.dir=run"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": root},
        stderr=subprocess.PIPE,
        text=True,
    )
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert (
        err.strip().splitlines()[-1] == f"perfkit.train: interrupted; what finished is in {tmp_path / 'run'}"
    )
    assert last.exists() and not (tmp_path / "run" / "metrics.json").exists()


def test_resume_with_other_settings_is_refused(cli: CLI, tmp_path: Path) -> None:
    """An interrupted run (checkpoints, no metrics.json) resumed with another optimizer or other
    data is refused before Lightning loads Adam's state into SGD; loader speed settings may change."""
    run = tmp_path / "run"
    quick = ("debug=fast", "logger=none", "data=digits", "model=mlp", f"hydra.run.dir={run}")
    code, err = cli(*quick)
    assert code == 0, run_failure(err)
    (run / "metrics.json").unlink()  # as if killed before the end
    code, err = cli(*quick, "resume=auto", "optimizer=sgd")
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith(
        "perfkit.train: error: resume=auto: model.optimizer._target_ ('torch.optim.AdamW' then, "
    )
    assert "'torch.optim.SGD' now) differs from the interrupted run's" in last
    code, err = cli(*quick, "resume=auto", "data.val_fraction=0.3")
    assert code == 2 and "data.val_fraction (0.1 then, 0.3 now) differs" in err
    code, err = cli(*quick, "resume=auto", "data.num_workers=0", "trainer.max_epochs=3")
    assert code == 0, run_failure(err)

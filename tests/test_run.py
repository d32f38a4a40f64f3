"""perfkit.run: the run directory (reserved before writing, never shared, never overwritten), resuming,
and the JSON it writes."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from perfkit.config import ConfigError, check_output_dir_overrides, fresh_run_dir
from perfkit.run import RunDirectory, guard_run_dir, resume_checkpoint, write_json
from tests.helpers import (
    CLI,
    run_cli,
    run_failure,
)
from tests.helpers.checks import DIGITS


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

    root = str(Path(__file__).resolve().parent.parent)
    process = subprocess.Popen(
        [sys.executable, "-m", "perfkit.train", "logger=none", "trainer.max_epochs=50", "hydra.run.dir=run"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": root},
        stderr=subprocess.PIPE,
        text=True,
    )
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    err = _signal_once_checkpointed(process, last, signal.SIGINT)
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


@pytest.mark.hostile
def test_default_run_directories_started_in_one_second_differ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import perfkit.run

    monkeypatch.delenv("PERFKIT_RUN_ID", raising=False)
    made = []
    for _ in range(3):  # three processes: each starts with no memory of the others
        monkeypatch.setattr(perfkit.run, "_fresh_dirs", {})
        made.append(fresh_run_dir(str(tmp_path / "runs")))
    assert len(set(made)) == 3 and all(Path(d).is_dir() for d in made)


@pytest.mark.hostile
def test_a_run_id_names_the_directory_for_every_rank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERFKIT_RUN_ID", "job-7")
    assert fresh_run_dir(str(tmp_path)) == str(tmp_path / "job-7")
    assert fresh_run_dir(str(tmp_path)) == str(tmp_path / "job-7")


@pytest.mark.hostile
@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("hydra.run.dir=/etc/hostname/run", "is not a directory"),
        ("hydra.sweep.dir=/etc/hostname/sweep", "is not a directory"),
        ("+hydra.run.dir=/etc/hostname/x/y", "is not a directory"),
        (
            f"hydra.run.dir=/tmp/{'a' * 300}/run",
            "a name in it is 300 bytes long, more than the file system's",
        ),
        ("hydra.run.dir=/tmp/" + "/".join(["b" * 200] * 21), "more than the system's 4095"),
    ],
)
def test_a_run_directory_that_cannot_be_made_is_one_line(
    override: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        check_output_dir_overrides("perfkit.train", [override])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("perfkit.train: error: ") and expected in err and len(err.splitlines()) == 1


@pytest.mark.hostile
@pytest.mark.parametrize("below", ["", "/run"])
def test_a_dangling_symlink_as_run_directory_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], below: str
) -> None:
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    with pytest.raises(SystemExit) as exit_:
        check_output_dir_overrides("perfkit.train", [f"hydra.run.dir={tmp_path / 'link'}{below}"])
    assert exit_.value.code == 2
    assert f"{tmp_path / 'link'} is a symbolic link to {tmp_path / 'gone'}, which does not exist" in (
        capsys.readouterr().err
    )


@pytest.mark.hostile
def test_an_unwritable_log_dir_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        fresh_run_dir("/etc/hostname/outputs")
    assert exit_.value.code == 2
    assert "cannot create a run directory under /etc/hostname/outputs" in capsys.readouterr().err


@pytest.mark.hostile
def test_a_failed_run_leaves_the_previous_runs_files_untouched(cli: CLI, tmp_path: Path) -> None:
    run_dir = tmp_path / "earlier"
    code, err = cli(*DIGITS, f"hydra.run.dir={run_dir}")
    assert code == 0, run_failure(err)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.suffix != ".log"}
    for args in (["optimizer.lr=-1"], ["seed=3"], ["resume=auto"]):
        code, err = cli(*DIGITS, *args, f"hydra.run.dir={run_dir}")
        assert code == 2, err
    assert {p: p.read_bytes() for p in before} == before


@pytest.mark.hostile
# --- process-level: signals, two runs at once, a rank that dies --------------------------------------
@pytest.mark.slow
def test_sigterm_exits_143_keeps_last_checkpoint_and_resume_finishes(tmp_path: Path) -> None:
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": root}
    args = [
        *DIGITS,
        "trainer.limit_train_batches=null",
        "trainer.max_epochs=4",
        "data.batch_size=8",
        "hydra.run.dir=run",
    ]
    process = subprocess.Popen(
        [sys.executable, "-m", "perfkit.train", *args],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    err = _signal_once_checkpointed(process, last, signal.SIGTERM)
    assert process.returncode == 143, err
    assert "stopped by SIGTERM" in err and "resume=auto" in err
    assert last.exists() and not (tmp_path / "run" / "metrics.json").exists()
    assert not (tmp_path / "run" / ".perfkit-run.lock").exists()
    code, _, err = run_cli(*args, "resume=auto", cwd=tmp_path)
    assert code == 0, run_failure(err)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["resumed_from"] == "checkpoints/last.ckpt" and metrics["epochs"] == 4


def _start(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": root}
    return subprocess.Popen(
        [sys.executable, "-m", "perfkit.train", *DIGITS, *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.hostile
@pytest.mark.slow
def test_two_runs_started_together_into_one_directory_never_mix(tmp_path: Path) -> None:
    runs = [_start(tmp_path, f"seed={seed}", "hydra.run.dir=shared") for seed in (1, 2)]
    results = [(run.wait(timeout=300), run.stderr.read() if run.stderr else "") for run in runs]
    assert sorted(code for code, _ in results) == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "in use by another perfkit run" in refused or "already holds an earlier run" in refused
    shared = tmp_path / "shared"
    metrics = json.loads((shared / "metrics.json").read_text())
    assert f"seed: {metrics['seed']}" in (shared / "config.yaml").read_text()
    assert sorted(p.name for p in (shared / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


@pytest.mark.hostile
@pytest.mark.slow
def test_two_runs_started_in_the_same_second_get_two_directories(tmp_path: Path) -> None:
    runs = [_start(tmp_path, f"seed={seed}", "paths.log_dir=out") for seed in (1, 2)]
    assert [run.wait(timeout=300) for run in runs] == [0, 0]
    directories = sorted((tmp_path / "out" / "train" / "runs").iterdir())
    assert len(directories) == 2
    seeds = {json.loads((d / "metrics.json").read_text())["seed"] for d in directories}
    assert seeds == {1, 2}


def _signal_once_checkpointed(process: subprocess.Popen[str], last: Path, signum: int) -> str:
    """Send ``signum`` once the run wrote ``last`` (or gave up: two minutes); its stderr."""
    deadline = time.monotonic() + 120
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signum)
    return process.communicate(timeout=60)[1]

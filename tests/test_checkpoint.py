"""perfkit.checkpoint: a checkpoint that can't be used is one line naming the key, the file and why."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from perfkit.checkpoint import check_fits, read_checkpoint
from perfkit.config import ConfigError
from tests.helpers import (
    CHECKPOINT_MESSAGES,
    CHECKPOINTS,
    CLI,
    broken_checkpoint,
    run_failure,
)
from tests.helpers.checks import DIGITS, one_line_error


@pytest.mark.parametrize("kind", [k for k in CHECKPOINTS if k != "other-model"])
def test_unreadable_checkpoints_say_why(tmp_path: Path, kind: str) -> None:
    path = broken_checkpoint(kind, tmp_path)
    with pytest.raises(ConfigError) as error:
        read_checkpoint(path, "ckpt_path")
    message = str(error.value)
    assert message.startswith(f"ckpt_path: {path}") and CHECKPOINT_MESSAGES[kind] in message
    assert "\n" not in message


def test_another_models_weights_do_not_fit(tmp_path: Path) -> None:
    path = broken_checkpoint("other-model", tmp_path)
    checkpoint = read_checkpoint(path, "ckpt_path")
    with pytest.raises(ConfigError, match=CHECKPOINT_MESSAGES["other-model"]):
        check_fits(checkpoint, nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2)), "ckpt_path", path)


def test_a_matching_checkpoint_is_read_and_fits(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    path = tmp_path / "good.ckpt"
    torch.save({"state_dict": model.state_dict()}, path)
    checkpoint = read_checkpoint(path, "ckpt_path")
    check_fits(checkpoint, model, "ckpt_path", path)  # no error
    assert set(checkpoint["state_dict"]) == {"weight", "bias"}


@pytest.mark.slow
def test_a_resumed_run_continues_the_same_random_stream(compose_train: Any, tmp_path: Path) -> None:
    """With dropout, resuming from last.ckpt ends with the uninterrupted run's weights exactly: every
    checkpoint carries the random generators' states (issue 28)."""
    import torch

    from perfkit.train import train

    common = [
        "accelerator=cpu",
        "logger=none",
        "trainer.enable_progress_bar=false",
        "experiment=digits_mlp",
        "trainer.limit_train_batches=6",
        "model.net.dropout=0.5",
    ]

    def weights(name: str, *extra: str) -> dict[str, Any]:
        train(compose_train(*common, *extra, output_dir=tmp_path / name))
        return torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]

    full = weights("full", "trainer.max_epochs=3")
    weights("first", "trainer.max_epochs=1")
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    resumed = weights("resumed", "trainer.max_epochs=3", f"ckpt_path={last}")
    for name, value in full.items():
        assert torch.equal(value, resumed[name]), name


_FULL_DISK = """
import resource, signal, sys, torch
from perfkit.checkpoint import checkpoint_io
from perfkit.errors import storage_fault
io = checkpoint_io()
path = sys.argv[1] + "/last.ckpt"
io.save_checkpoint({"w": torch.zeros(100)}, path)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails (EFBIG) instead of killing the process
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
try:
    io.save_checkpoint({"w": torch.zeros(100_000)}, path)
except OSError as error:
    print(storage_fault(error))
"""


def test_a_checkpoint_that_does_not_fit_names_the_file_and_keeps_the_previous_one(tmp_path: Path) -> None:
    import subprocess
    import sys

    import torch

    done = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert (
        f"cannot write {tmp_path / 'last.ckpt'}: File too large; files written before are intact"
        in done.stdout
    )
    assert torch.load(tmp_path / "last.ckpt")["w"].shape == (100,)


def test_only_storage_faults_get_the_storage_line() -> None:
    import errno

    from perfkit.errors import storage_fault

    assert "No space left" in (
        storage_fault(OSError(errno.ENOSPC, "No space left on device", "m.json")) or ""
    )
    assert storage_fault(OSError(errno.ENOENT, "No such file", "x")) is None
    assert storage_fault(ValueError("no")) is None


@pytest.mark.parametrize(
    ("message", "line"),
    [
        ("DataLoader worker (pid 4242) is killed by signal: Killed. ", "(pid 4242) died (killed by signal Killed, usually the out-of-memory killer)"),
        ("DataLoader worker (pid(s) 11, 12) exited unexpectedly", "(pid 11, 12) died (exited unexpectedly)"),
    ],
)  # fmt: skip
def test_a_dead_loader_worker_is_one_line(message: str, line: str) -> None:
    from perfkit.errors import worker_fault

    assert line in (worker_fault(RuntimeError(message)) or "")
    assert worker_fault(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None


@pytest.mark.slow
def test_killing_a_loader_worker_mid_run_is_one_line(tmp_path: Path) -> None:

    root = str(Path(__file__).resolve().parent.parent)
    process = subprocess.Popen(
        [sys.executable, "-m", "perfkit.train", "logger=none", "data.num_workers=2", "data.device_resident=false",
         "data.persistent_workers=true", "trainer.max_epochs=50", "trainer.enable_progress_bar=false",
         "hydra.run.dir=run"],
        cwd=tmp_path, env={**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": root},
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline, workers = time.monotonic() + 120, []
    while not workers and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
        found = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True)
        workers = found.stdout.split()
    assert workers, "no DataLoader worker appeared"
    time.sleep(1.0)
    os.kill(int(workers[-1]), signal.SIGKILL)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 1, err
    last = err.strip().splitlines()[-1]
    # torch reports the signal when its watchdog sees the death first, else only that the worker exited
    assert last.startswith("perfkit.train: error: a DataLoader worker (pid ") and (
        "died (killed by signal Killed" in last or "died (exited unexpectedly)" in last
    )


def test_a_best_checkpoint_deleted_during_the_run_is_said_not_a_crash(cli: CLI, tmp_path: Path) -> None:
    code, err = cli(
        "debug=fast", "logger=none", "data=digits", "model=mlp",
        "+callbacks.rm._target_=tests.helpers.toy_models.RemoveCheckpoints",
    )  # fmt: skip
    assert code == 0, run_failure(err)
    metrics = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert (
        metrics["evaluated"].startswith("final weights (")
        and "was removed during the run" in metrics["evaluated"]
    )
    assert metrics["test"]["acc"] > 0


@pytest.mark.hostile
# --- checkpoints that are not checkpoints, or not this model's -------------------------------------
@pytest.mark.parametrize("kind", CHECKPOINTS)
def test_a_bad_ckpt_path_is_one_line(cli: CLI, tmp_path: Path, kind: str) -> None:
    code, err = cli(*DIGITS, f"ckpt_path={broken_checkpoint(kind, tmp_path)}")
    one_line_error(code, err, CHECKPOINT_MESSAGES[kind])


@pytest.mark.hostile
@pytest.mark.parametrize("kind", ["empty", "text", "truncated", "other-model"])
def test_resume_auto_from_a_bad_last_checkpoint_is_one_line(cli: CLI, tmp_path: Path, kind: str) -> None:
    run_dir = tmp_path / "interrupted"
    (run_dir / "checkpoints").mkdir(parents=True)
    broken_checkpoint(kind, tmp_path).rename(run_dir / "checkpoints" / "last.ckpt")
    code, err = cli(*DIGITS, "resume=auto", f"hydra.run.dir={run_dir}")
    one_line_error(code, err, "resume=auto", CHECKPOINT_MESSAGES[kind])
    assert (run_dir / "checkpoints" / "last.ckpt").exists()  # left for the user to look at


@pytest.mark.hostile
@pytest.mark.parametrize("kind", ["empty", "text", "truncated"])
def test_optimize_refuses_a_bad_checkpoint_in_one_line(tmp_path: Path, kind: str) -> None:
    from perfkit.optimize import load_run

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 1\n")
    broken_checkpoint(kind, tmp_path).rename(run / "checkpoints" / "best.ckpt")
    with pytest.raises(ConfigError, match=CHECKPOINT_MESSAGES[kind]):
        load_run(str(run / "checkpoints" / "best.ckpt"))

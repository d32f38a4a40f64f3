"""DDP: the same numbers as one process, failures that end the job, launchers beyond one machine."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from perfkit.distributed import port_in_use
from tests.helpers import FAST, ComposeTrain, run_cli, run_failure

QUIET = ["accelerator=cpu", "trainer.enable_progress_bar=false", "logger=none"]


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def test_port_probe_sees_a_listener() -> None:
    with socket.socket() as listener:
        listener.bind(("", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert port_in_use(port)
    assert not port_in_use(port)


@pytest.mark.slow  # a fresh interpreter (~10 s): in the slow stage, which CI runs
def test_a_busy_master_port_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("", 0))
        listener.listen()
        port = listener.getsockname()[1]
        code, _, err = run_cli(
            *FAST,
            "strategy=ddp",
            "devices=2",
            "hydra.run.dir=run",
            cwd=tmp_path,
            extra_env={"MASTER_PORT": str(port)},
        )
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        f"perfkit.train: error: MASTER_PORT={port} is already in use on this machine: unset MASTER_PORT to "
        "let Lightning pick a free port, or choose another"
    )


@pytest.mark.slow  # a fresh interpreter (~10 s): in the slow stage, which CI runs
def test_multirun_with_script_relaunching_ddp_is_refused(tmp_path: Path) -> None:
    code, _, err = run_cli(
        "-m", *FAST, "strategy=ddp", "devices=2", "seed=1,2", "hydra.sweep.dir=sweep", cwd=tmp_path
    )
    assert code == 2
    # the sweep ends at the first job, and its summary says why
    assert "Hydra multirun (-m) cannot use strategy=ddp" in (tmp_path / "sweep" / "summary.md").read_text()
    assert err.strip().splitlines()[-1] == (
        "perfkit.train: error: Hydra multirun (-m) cannot use strategy=ddp with several devices: each DDP "
        "process would re-run the whole sweep; use strategy=ddp_spawn with -m, or start one run per configuration"
    )
    assert not list(tmp_path.rglob("metrics.json"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        pytest.param(["accelerator=gpu", "devices=4"], "perfkit.train: error: ", marks=pytest.mark.slow),
        (["devices=0"], "perfkit.train: error: devices=0 is not valid: use a positive count"),
        pytest.param(
            ["resume=yes"],
            "perfkit.train: error: resume='yes' is not valid; allowed: auto, null",
            marks=pytest.mark.slow,
        ),
    ],
    ids=["more-gpus-than-exist", "no-devices", "bad-resume"],
)
def test_impossible_device_requests_are_one_line(tmp_path: Path, overrides: list[str], message: str) -> None:
    if "accelerator=gpu" in overrides and torch.cuda.device_count() >= 4:
        pytest.skip("this machine has 4 GPUs")
    code, _, err = run_cli("trainer.enable_progress_bar=false", *overrides, cwd=tmp_path)
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(message) and "Traceback" not in err


@pytest.mark.slow
def test_a_killed_run_resumes_and_ends_with_the_same_steps(tmp_path: Path) -> None:
    """SIGKILL a real run mid-epoch, then resume=auto in the same run dir."""
    run_dir = tmp_path / "run"
    # 640 training samples at ~4 ms each: 20 steps and ~3 s per epoch, 60 steps in all
    args = [
        *QUIET,
        "data=synthetic",
        "data.num_samples=800",
        "data.cpu_cost_ms=4",
        "data.batch_size=32",
        "model=mlp",
        "trainer.max_epochs=3",
        "trainer.num_sanity_val_steps=0",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    victim = subprocess.Popen(
        [sys.executable, "-m", "perfkit.train", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not last.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert last.exists(), "the run never finished its first epoch"
    time.sleep(1.0)  # into the second epoch
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (run_dir / "metrics.json").exists()
    saved_step = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert saved_step in (20, 40)  # the end of a completed epoch

    code, _, err = run_cli(*args, cwd=tmp_path)  # without resume=auto: refused, nothing touched
    assert code == 2 and "interrupted run; continue it with resume=auto" in err

    code, _, err = run_cli(*args, "resume=auto", cwd=tmp_path)
    assert code == 0, run_failure(err)
    metrics = _metrics(run_dir)
    assert metrics["optimizer_steps"] == 60 and metrics["epochs"] == 3
    assert metrics["resumed_from"] == "checkpoints/last.ckpt"
    # at most the interrupted epoch was lost: the resumed process ran only the epochs after the checkpoint
    assert len(metrics["epoch_times_s"]) == 3 - saved_step // 20
    assert (run_dir / "config.yaml").exists() and (run_dir / "config.resume-1.yaml").exists()


@pytest.mark.distributed
def test_ddp_matches_one_process_with_the_global_batch(tmp_path: Path) -> None:
    """2 ranks x batch 16 for 4 SGD steps == 1 process x batch 32; evaluation counts each sample once."""
    common = [
        *QUIET,
        "data=digits",
        "model=mlp",  # no dropout, no batch norm
        "optimizer=sgd",
        "seed=7",
        "data.test_fraction=0.0995",  # 179 test samples: odd, so a padding sampler would repeat one
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=4",
        "trainer.num_sanity_val_steps=0",
        "logger=csv",  # the epoch's training loss and accuracy
    ]
    code, _, err = run_cli(*common, "devices=1", "data.batch_size=32", "hydra.run.dir=single", cwd=tmp_path)
    assert code == 0, run_failure(err)
    code, _, err = run_cli(
        *common, "strategy=ddp", "devices=2", "data.batch_size=16", "hydra.run.dir=ddp", cwd=tmp_path
    )
    assert code == 0, run_failure(err)

    def weights(run: str) -> dict[str, torch.Tensor]:
        checkpoint = torch.load(
            tmp_path / run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
        )
        return checkpoint["state_dict"]

    single, ddp = weights("single"), weights("ddp")
    assert single.keys() == ddp.keys()
    torch.testing.assert_close(ddp, single)
    one, two = _metrics(tmp_path / "single"), _metrics(tmp_path / "ddp")
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["optimizer_steps"] == two["optimizer_steps"] == 4
    for split in ("val", "test"):
        assert two[split]["acc"] == pytest.approx(one[split]["acc"], abs=1e-6)
        assert two[split]["loss"] == pytest.approx(one[split]["loss"], rel=1e-5)
    # training sums each rank's correct predictions and losses: over both ranks, the one process's
    one_train, two_train = (
        _epoch_training_metrics(tmp_path / "single"),
        _epoch_training_metrics(tmp_path / "ddp"),
    )
    assert two_train["train/acc"] == pytest.approx(one_train["train/acc"], abs=1e-6)
    assert two_train["train/loss_epoch"] == pytest.approx(one_train["train/loss_epoch"], rel=1e-5)


def _epoch_training_metrics(run_dir: Path) -> dict[str, float]:
    import csv

    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    row = next(r for r in rows if r.get("train/acc"))
    return {key: float(row[key]) for key in ("train/acc", "train/loss_epoch")}


def _run_with_rank_1_failing(strategy: str, how: str, cwd: Path) -> tuple[int, str, str]:
    """A 2-rank CPU job whose rank 1 raises (``how=raise``) or is SIGKILLed (``kill``) at step 2."""
    return run_cli(
        *FAST,
        f"strategy={strategy}",
        "devices=2",
        "logger=none",
        "hydra.run.dir=run",
        "+callbacks.fail._target_=tests.helpers.toy_models.FailOnRank",
        "+callbacks.fail.rank=1",
        f"+callbacks.fail.how={how}",
        cwd=cwd,
        timeout=180,
    )


@pytest.mark.distributed
@pytest.mark.parametrize(("how", "cause"), [("raise", "exit status 1"), ("kill", "killed by SIGKILL")])
def test_one_failing_rank_ends_the_job_and_is_named(tmp_path: Path, how: str, cause: str) -> None:
    """The rank that died is named, by itself if it can and by rank 0, which only lost its connection."""
    started = time.monotonic()
    code, _, err = _run_with_rank_1_failing("ddp", how, tmp_path)
    assert code == 1
    assert time.monotonic() - started < 120
    if how == "raise":
        assert "perfkit.train: rank 1 of 2 failed: RuntimeError: injected failure on rank 1 at step 2" in err
    assert f"perfkit.train: rank 1 of 2 ({cause}" in err and "died first; rank 0 of 2 stopped" in err
    assert "rank 0 of 2 failed" not in err
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.distributed
def test_a_stopped_rank_is_named_after_the_collective_timeout(tmp_path: Path) -> None:
    """Rank 1 stops (SIGSTOP) at step 2: rank 0 gives up after strategy.timeout_s, names rank 1 from
    the ranks' heartbeats, and ends it instead of waiting torch's 30 minutes."""
    started = time.monotonic()
    code, _, err = run_cli(
        *FAST,
        "strategy=ddp",
        "devices=2",
        "logger=none",
        "hydra.run.dir=run",
        "strategy.timeout_s=10",
        "+callbacks.fail._target_=tests.helpers.toy_models.FailOnRank",
        "+callbacks.fail.rank=1",
        "+callbacks.fail.how=stop",
        cwd=tmp_path,
        timeout=180,
    )
    assert code == 1 and time.monotonic() - started < 120
    assert "perfkit.train: rank 1 of 2 (last noted progress" in err
    assert "stopped answering; rank 0 of 2 gave up waiting for it in a collective (Timed out" in err
    assert "Traceback" not in err
    left = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert not left.stdout.strip(), "the stopped rank was left behind"


def test_cpu_collectives_time_out_in_minutes_not_half_an_hour(compose_train: ComposeTrain) -> None:
    from perfkit.build import CPU_COLLECTIVE_TIMEOUT_S, _strategy_options

    cfg = compose_train("strategy=ddp", "accelerator=cpu")
    assert _strategy_options(cfg, object())["timeout"].total_seconds() == CPU_COLLECTIVE_TIMEOUT_S
    cfg = compose_train("strategy=ddp", "accelerator=cpu", "strategy.timeout_s=30")
    assert _strategy_options(cfg, object())["timeout"].total_seconds() == 30
    assert "timeout" not in _strategy_options(compose_train("strategy=auto"), object())


@pytest.mark.distributed
def test_ddp_spawn_on_cpu(tmp_path: Path) -> None:
    code, _, err = run_cli(
        *FAST, "strategy=ddp_spawn", "devices=2", "logger=none", "hydra.run.dir=run", cwd=tmp_path
    )
    assert code == 0, run_failure(err)
    metrics = _metrics(tmp_path / "run")
    assert metrics["world_size"] == 2 and metrics["strategy"] == "DDPStrategy"
    # fit ran in spawned workers: their measurements and progress must still reach metrics.json
    assert metrics["train_samples_per_epoch"] == [2 * 5 * 64]
    assert (metrics["epochs"], metrics["optimizer_steps"]) == (1, 5)
    assert metrics["process_group_backend"] == "gloo"


@pytest.mark.distributed
@pytest.mark.parametrize(
    ("how", "line"),
    [
        ("raise", "rank 1 of 2 failed: RuntimeError: injected failure on rank 1 at step 2"),
        ("kill", "rank 1 of 2 died (killed by SIGKILL, e.g. by the out-of-memory killer)"),
    ],
)
def test_a_failing_spawned_worker_is_named(tmp_path: Path, how: str, line: str) -> None:
    """Under ddp_spawn the launching process is no rank: it names the worker that failed, not itself."""
    code, _, err = _run_with_rank_1_failing("ddp_spawn", how, tmp_path)
    assert code == 1
    assert err.strip().splitlines()[-1] == f"perfkit.train: {line}"
    assert "ProcessRaisedException" not in err and "rank 0 of 2 failed" not in err
    assert not (tmp_path / "run" / "metrics.json").exists()

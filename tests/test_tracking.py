"""W&B: offline without a key, reports as artifacts, the key never copied anywhere, online refused without one."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from perfkit.bench.suite import run_bench
from perfkit.config import ConfigError, compose_config
from perfkit.tracking import api_key_available, check_loggers, check_online_wandb
from perfkit.train import train
from tests.helpers import (
    CLI,
    FAST,
    ComposeTrain,
    run_cli,
    run_failure,
)
from tests.helpers.checks import DIGITS, one_line_error

# shaped like a real key; it must never reach a file or the terminal
FAKE_KEY = "perfkitfakekey" + "0123456789abcdef" * 2


@pytest.fixture
def no_wandb_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def _files_containing(root: Path, needle: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def _offline_run(run_dir: Path) -> Path:
    (offline_run,) = (run_dir / "wandb").glob("offline-run-*")
    return offline_run


def _assert_recorded(run_dir: Path, expected: tuple[bytes, ...], timeout_s: float = 60.0) -> None:
    """The offline record holds every ``expected`` string. W&B's helper process (wandb-core) may still
    be writing the last records when ``run.finish()`` returns, so wait for them, up to a deadline."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        records = b"".join(path.read_bytes() for path in _offline_run(run_dir).glob("run-*.wandb"))
        missing = [needle for needle in expected if needle not in records]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert missing == [], f"not in the W&B record after {timeout_s:.0f} s: {missing}"


def test_tensorboard_and_wandb_together_log_config_system_and_report(
    compose_train: ComposeTrain,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    run_dir = tmp_path / "run"
    train(compose_train(*FAST, "logger=[tensorboard,wandb]", "profiler=pytorch", output_dir=run_dir))

    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    # the resolved config with the system description, and the report artifact with the run's files
    _assert_recorded(
        run_dir,
        (b"cpu_model", b"torch_threads", b"run-report", b"metrics.json", b"profile.md", b"config.yaml"),
    )
    assert _files_containing(run_dir, FAKE_KEY) == []
    captured = capfd.readouterr()
    assert FAKE_KEY not in captured.out + captured.err


def test_online_without_a_key_is_refused_in_one_line(no_wandb_credentials: None) -> None:
    assert not api_key_available()
    with pytest.raises(ConfigError, match=r"logger.wandb.offline=false needs a W&B API key") as error:
        check_loggers(
            OmegaConf.create(
                {"wandb": {"_target_": "lightning.pytorch.loggers.WandbLogger", "offline": False}}
            )
        )
    assert "\n" not in str(error.value)
    check_online_wandb(True, "logger.wandb.offline")  # offline needs nothing


def test_online_is_allowed_with_a_key_or_when_forced_offline(
    no_wandb_credentials: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    check_online_wandb(False, "logger.wandb.offline")
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    check_online_wandb(False, "logger.wandb.offline")


@pytest.mark.slow  # a fresh interpreter: ~10 s; test_online_without_a_key_is_refused_in_one_line is fast
def test_online_without_a_key_fails_fast_from_the_cli(no_wandb_credentials: None, tmp_path: Path) -> None:
    code, _, err = run_cli(
        *FAST, "logger=wandb", "logger.wandb.offline=false", "hydra.run.dir=run", cwd=tmp_path
    )
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("perfkit.train: error: logger.wandb.offline=false needs")
    assert not (tmp_path / "run" / "wandb").exists()  # refused before wandb started


def test_bench_report_goes_to_wandb_as_table_and_artifact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = compose_config(
        "bench",
        [
            "bench.models=[mlp]",
            "bench.variants=[eager,int8_dynamic]",
            "bench.batch_sizes=[8]",
            "bench.rounds=6",
            "bench.warmup=1",
            "bench.train_epochs=0",
            "device=cpu",
            "wandb.enabled=true",
        ],
    )
    OmegaConf.update(cfg, "paths.output_dir", str(tmp_path / "run"))
    run_bench(cfg)
    _assert_recorded(
        tmp_path / "run",
        (b"bench-run", b"report.json", b"report.md", b"latency.png", b"speedup/cpu/inference/b8/mlp"),
    )


@pytest.mark.hostile
# --- Weights & Biases without a server --------------------------------------------------------------
def test_wandb_online_without_network_falls_back_offline_quickly(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    started = time.monotonic()
    code, err = cli(*DIGITS, "logger=wandb", "logger.wandb.offline=false", f"hydra.run.dir={tmp_path / 'r'}")
    assert code == 0, run_failure(err)
    assert time.monotonic() - started < 60
    assert "W&B server unreachable: logging offline" in (tmp_path / "r" / "train.log").read_text()
    assert list((tmp_path / "r" / "wandb").glob("offline-run-*"))


@pytest.mark.hostile
@pytest.mark.parametrize(("mode", "status"), [("", 0), ("  ", 0), ("sideways", 2)])
def test_wandb_mode_empty_means_unset_and_nonsense_is_refused(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, status: int
) -> None:
    monkeypatch.setenv("WANDB_MODE", mode)
    code, err = cli(*DIGITS, "logger=wandb", f"hydra.run.dir={tmp_path / 'r'}")
    if status:
        one_line_error(code, err, f"WANDB_MODE={mode!r} is not valid")
    else:
        assert code == 0, run_failure(err)

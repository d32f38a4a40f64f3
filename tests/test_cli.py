"""perfkit.cli: one runner for every command, and every failure as one line with its exit status."""

from __future__ import annotations

import functools
import importlib
import json
from pathlib import Path

import pytest
import tomllib
from omegaconf import OmegaConf

from perfkit.cli import run_task
from perfkit.config import ConfigError

ROOT = Path(__file__).parents[1]
CFG = OmegaConf.create({"paths": {"output_dir": "/tmp/perfkit-cli-test-run"}})


def test_every_command_has_a_console_script_served_by_the_runner() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {f"perfkit-{name}" for name in ("train", "profile", "optimize", "bench", "tune")}
    for target in scripts.values():
        module, _, name = target.partition(":")
        assert callable(getattr(importlib.import_module(module), name)), target


def _fails_with(error: BaseException):  # type: ignore[no-untyped-def]
    def task(cfg: object) -> None:
        raise error

    return task


@pytest.mark.parametrize(
    ("error", "status", "line"),
    [
        (ConfigError("data.batch_size=0 is not valid"), 2, "prog: error: data.batch_size=0 is not valid"),
        (KeyboardInterrupt(), 130, "prog: interrupted; what finished is in /tmp/perfkit-cli-test-run"),
    ],
)
def test_failures_are_one_line_with_their_exit_status(
    error: BaseException,
    status: int,
    line: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    with pytest.raises(SystemExit) as exit_:
        run_task(CFG, "prog", _fails_with(error))
    assert exit_.value.code == status
    assert capsys.readouterr().err.strip() == line


def test_user_errors_are_bad_input_only_where_a_command_says_so(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    with pytest.raises(SystemExit) as exit_:
        run_task(CFG, "prog", _fails_with(ValueError("no Linear layer")), user_errors=(ValueError,))
    assert exit_.value.code == 2 and capsys.readouterr().err.strip() == "prog: error: no Linear layer"
    # elsewhere not bad input: raised in code that is not perfkit's (here this test's), it is named
    with pytest.raises(SystemExit) as exit_:
        run_task(CFG, "prog", _fails_with(ValueError("no Linear layer")))
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 1 and err.startswith("prog: error in your code, tests/test_cli.py:")
    assert err.endswith("ValueError: no Linear layer (HYDRA_FULL_ERROR=1 shows the traceback)")
    with pytest.raises(TypeError):  # raised in perfkit or a library: a bug, its traceback kept
        run_task(CFG, "prog", functools.partial(json.loads, "{}"))


def test_full_error_shows_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigError):
        run_task(CFG, "prog", _fails_with(ConfigError("bad")))


def test_a_task_result_is_returned() -> None:
    assert run_task(CFG, "prog", lambda cfg: 0.5) == 0.5


@pytest.mark.parametrize(
    ("error", "lost"),
    [
        (
            RuntimeError("[pair.cc:545] Read error [127.0.0.1]:20905: Connection reset by peer. This is ..."),
            True,
        ),
        (RuntimeError("[pair.cc:561] Connection closed by peer [127.0.0.1]:10475. This is ..."), True),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), False),
        (ValueError("injected failure on rank 0"), False),
    ],
)
def test_only_a_lost_connection_is_blamed_on_another_rank(error: Exception, lost: bool) -> None:
    """Rank 0's own error must not be reported as caused by the ranks that died after it."""
    from perfkit.cli import _lost_contact

    assert _lost_contact(error) is lost


def _worker_traceback(error: Exception) -> str:
    """The text torch's spawn wrapper sends home when a worker raises ``error``."""
    import traceback

    try:
        try:
            raise KeyError("the first error")
        except KeyError as first:
            raise error from first
    except Exception:
        return traceback.format_exc()


def _spawned(error: Exception, index: int = 1) -> Exception:
    from torch.multiprocessing import ProcessRaisedException

    message = f"\n\n-- Process {index} terminated with the following error:\n" + _worker_traceback(error)
    return ProcessRaisedException(message, index, 4242)


@pytest.fixture
def no_trainer(monkeypatch: pytest.MonkeyPatch) -> None:
    """No trainer remembered by an earlier in-process run: ranks are named without a world size."""
    monkeypatch.setattr("perfkit.distributed._job", {})
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")


@pytest.mark.usefixtures("no_trainer")
@pytest.mark.parametrize(
    ("worker_error", "status", "line"),
    [
        (
            RuntimeError("injected failure\non two lines"),
            1,
            "prog: rank 1 failed: RuntimeError: injected failure on two lines",
        ),
        (ConfigError("monitor=val/acc2 is not logged"), 2, "prog: error: monitor=val/acc2 is not logged"),
    ],
)
def test_a_spawned_workers_error_is_reported_as_the_worker_raised_it(
    worker_error: Exception, status: int, line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Under ddp_spawn torch passes on only the worker's traceback text: the last exception in it decides."""
    with pytest.raises(SystemExit) as exit_:
        run_task(CFG, "prog", _fails_with(_spawned(worker_error)))
    assert exit_.value.code == status
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1] == line
    if status == 1:  # a bug in the user's code: the worker's own traceback comes first
        assert "the first error" in err and "in _worker_traceback" in err


@pytest.mark.usefixtures("no_trainer")
def test_a_spawned_worker_that_diverged_is_the_divergence_line(capsys: pytest.CaptureFixture[str]) -> None:
    from perfkit.callbacks import DivergedError

    with pytest.raises(SystemExit) as exit_:
        run_task(CFG, "prog", _fails_with(_spawned(DivergedError("train/loss is nan at step 3"))))
    assert exit_.value.code == 1
    assert capsys.readouterr().err.strip() == "prog: error: train/loss is nan at step 3"


@pytest.mark.usefixtures("no_trainer")
def test_a_killed_spawned_worker_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    from torch.multiprocessing import ProcessExitedException

    killed = ProcessExitedException("process 1 terminated with signal SIGKILL", 1, 4242, -9, "SIGKILL")
    with pytest.raises(SystemExit) as exit_:
        run_task(CFG, "prog", _fails_with(killed))
    assert exit_.value.code == 1
    assert capsys.readouterr().err.strip() == (
        "prog: rank 1 died (killed by SIGKILL, e.g. by the out-of-memory killer)"
    )

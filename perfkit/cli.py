"""One runner for every perfkit command (train, profile, optimize, bench, tune).

:func:`command` puts Hydra's command line around a task function ``task(cfg)``; :func:`run_task`
turns every way a task can fail into one line on stderr and an exit status:

- 2: a configuration error (``ConfigError``, Lightning's ``MisconfigurationException``, a class that
  refuses its arguments), in a Hydra sweep too, after recording the job in the sweep summary;
- 1: training diverged, or a rank died (naming the rank that died first);
- 130: Ctrl-C, 143: SIGTERM (saying what is kept and how to resume);
- in a Hydra sweep, a job that fails while running is recorded, returns NaN and the sweep goes on
  (it exits with status 1 at the end, see :mod:`perfkit.sweep`).

``HYDRA_FULL_ERROR=1`` shows the traceback instead.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from perfkit.config import ConfigError, check_output_dir_overrides, config_dir, error_line
from perfkit.distributed import (
    WorkerError,
    dead_ranks,
    end_stuck_children,
    rank_description,
    spawned_worker_error,
    stuck_rank,
    timed_out,
)
from perfkit.errors import Interrupted, noting_ctrl_c, storage_fault, user_frame, worker_fault
from perfkit.run import RANK_VARIABLES, is_launching_process, stray_rank_variables
from perfkit.sweep import in_sweep, record_failure
from perfkit.system import process_start_time

log = logging.getLogger(__name__)

Task = Callable[[DictConfig], Any]


def command(
    program: str, config_name: str, task: Task, *, user_errors: tuple[type[Exception], ...] = ()
) -> Callable[[], None]:
    """The console entry point of ``program``: ``task`` on the config ``config_name`` composed from the
    command line. ``user_errors``: more exception types that mean bad input (exit status 2)."""

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)
    def hydra_main(cfg: DictConfig) -> Any:
        return run_task(cfg, program, task, user_errors=user_errors)

    def main() -> None:

        _command_started[:] = [process_start_time()]
        check_output_dir_overrides(program)
        _drop_stray_ranks(program)
        hydra_main()

    return main


def _drop_stray_ranks(program: str) -> None:
    """A ``RANK=1`` left in the environment, with no launcher around, would make Lightning (which reads
    it when imported) log as rank 1 and perfkit believe it is a DDP child: say so, and drop it."""

    stray = stray_rank_variables()
    if stray:
        print(
            f"{program}: note: {', '.join(stray)} is set, but no launcher (torchrun, SLURM, Lightning) "
            "started this process: ignoring it (this process is rank 0 of its own job)",
            file=sys.stderr,
        )
        for name in RANK_VARIABLES:
            os.environ.pop(name, None)


def run_program(main: Callable[[], None]) -> None:
    """``main()`` as this process's program (``if __name__ == "__main__"``), then a quicker exit: the
    interpreter's shutdown collects every object torch and Lightning created (about 1.3 s on 2 cores);
    frozen, they are left to the exit itself (about 0.3 s). Files are closed and atexit handlers run
    as usual."""
    try:
        main()
    finally:
        gc.freeze()


# set by a command's main(): when the command started, taken by the first training run
_command_started: list[float] = []


def take_command_start() -> float | None:
    """When this command's process started, once (a later run in the same process, such as the next
    job of a sweep, counts from its own start); None outside a command."""
    return _command_started.pop() if _command_started else None


def run_task(
    cfg: DictConfig, program: str, task: Task, *, user_errors: tuple[type[Exception], ...] = ()
) -> Any:
    """``task(cfg)``, with every failure as one line and an exit status (see the module docstring)."""
    from hydra.errors import InstantiationException
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    # here, not at the top: every command's `--help` answers before torch and Lightning load
    from perfkit.callbacks import DivergedError

    bad_input: tuple[type[Exception], ...] = (
        ConfigError,
        MisconfigurationException,
        InstantiationException,
        *user_errors,
    )
    try:
        with noting_ctrl_c():
            return _in_launching_process(task, cfg, bad_input)
    except bad_input as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"{program}: error: {error_line(error)}{_monitor_hint(error)}", file=sys.stderr)
        if in_sweep() and is_launching_process():
            # a configuration error usually holds for every job: end the sweep, keeping its summary
            record_failure(error_line(error), final=True)
        sys.exit(2)
    except SIGTERMException:
        # Lightning ends fit with SystemExit(None), status 0: schedulers would record a success
        if is_launching_process():
            print(f"{program}: {_interrupted_note(Path(cfg.paths.output_dir))}", file=sys.stderr)
        sys.exit(143)
    except KeyboardInterrupt:
        _interrupted(program, cfg)
    except SystemExit as exit_:
        if exit_.code == 1 and Interrupted.seen:  # Lightning's exit after a Ctrl-C inside fit
            _interrupted(program, cfg)
        raise
    except DivergedError as error:
        if is_launching_process():  # every rank stopped together: one line, from the launching one
            print(f"{program}: error: {error}", file=sys.stderr)
            if in_sweep():
                record_failure(str(error))
                return math.nan
        sys.exit(1)
    except Exception as error:
        if _report_known_fault(program, error) or _report_failure(program, error):
            return math.nan
        _exit_if_users_code(program, error)
        raise


def _report_known_fault(program: str, error: Exception) -> bool:
    """One line, then exit, for a fault of the machine (full disk, a killed loader worker) or of the
    data (a float64 batch behind a dtype error); True when the sweep goes on without this job."""
    from perfkit.data.checks import explain  # imports Lightning: only once something failed

    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return False
    fault, status = storage_fault(error) or worker_fault(error), 1
    if fault is None and (explained := explain(error)) is not None:
        fault, status = f"data: {explained}", 2
    if fault is None:
        return False
    print(f"{program}: error: {fault}", file=sys.stderr)
    if in_sweep() and is_launching_process():
        record_failure(fault)
        return True
    sys.exit(status)


def _interrupted(program: str, cfg: DictConfig) -> None:

    if is_launching_process():
        print(f"{program}: interrupted; what finished is in {cfg.paths.output_dir}", file=sys.stderr)
    sys.exit(130)


def _in_launching_process(task: Task, cfg: DictConfig, bad_input: tuple[type[Exception], ...]) -> Any:
    """``task(cfg)``; a ``ddp_spawn`` worker's failure is raised here as what the worker raised, so
    that it is reported as it would be without spawn (torch passes on only the worker's traceback)."""
    # here, not at the top: every command's `--help` answers before torch and Lightning load
    from perfkit.callbacks import DivergedError

    try:
        return task(cfg)
    except Exception as error:
        worker_error = spawned_worker_error(error)
        if worker_error is None:
            raise
        # chained to torch's exception: HYDRA_FULL_ERROR=1 still shows the worker's traceback
        if worker_error.error_type in {kind.__name__ for kind in bad_input}:
            raise ConfigError(worker_error.message) from error
        if worker_error.error_type == DivergedError.__name__:
            raise DivergedError(worker_error.message) from error
        raise worker_error from error


def _report_failure(program: str, error: Exception) -> bool:
    """Say which rank failed (or died first); True when the sweep goes on without this job."""
    if isinstance(error, WorkerError):  # a ddp_spawn worker: its own traceback, then one line
        if error.traceback:
            print(error.traceback, file=sys.stderr)
        what = f"failed: {error_line(error)}" if error.error_type else error.message
        print(f"{program}: {error.rank} {what}", file=sys.stderr)
        if in_sweep():
            record_failure(f"{error.rank} {what}")
            return True
        sys.exit(1)
    rank = rank_description()
    if rank and timed_out(error) and (stuck := stuck_rank()):
        print(
            f"{program}: {stuck} stopped answering; {rank} gave up waiting for it in a collective "
            f"({_lost_contact_reason(error)}). Look at that process: stopped (SIGSTOP, a debugger), stuck "
            "in user code or I/O, or much slower than the others; strategy.timeout_s sets the wait",
            file=sys.stderr,
        )
        end_stuck_children()
        if in_sweep() and is_launching_process():
            record_failure(f"{stuck} stopped answering")
            return True
        sys.exit(1)
    # only a lost connection points elsewhere: rank 0's own error must not be blamed on the ranks it
    # took down with it
    dead = dead_ranks() if rank and _lost_contact(error) else []
    if dead:  # this rank only lost contact with the one that died: name that one
        print(
            f"{program}: {', '.join(dead)} died first; {rank} stopped because it lost contact "
            f"({type(error).__name__}: {_lost_contact_reason(error)})",
            file=sys.stderr,
        )
        if not in_sweep():
            sys.exit(1)
    elif rank:  # in a DDP job, say which rank failed: the others often fail only in consequence
        print(f"{program}: {rank} failed: {type(error).__name__}: {error_line(error)}", file=sys.stderr)
    if in_sweep() and is_launching_process():
        log.exception("%s: this sweep job failed; the sweep goes on", program)
        record_failure(f"{type(error).__name__}: {error_line(error)}")
        return True
    return False


def _exit_if_users_code(program: str, error: BaseException) -> None:
    """An error raised in (or under) the user's own module or datamodule: one line naming its file,
    line and function, not a traceback through Lightning (HYDRA_FULL_ERROR=1 shows that)."""
    where = user_frame(error)
    if where is None or rank_description() or os.environ.get("HYDRA_FULL_ERROR") == "1":
        return
    print(
        f"{program}: error in your code, {where}: {type(error).__name__}: {error_line(error)} "
        "(HYDRA_FULL_ERROR=1 shows the traceback)",
        file=sys.stderr,
    )
    sys.exit(1)


def _monitor_hint(error: BaseException) -> str:
    """Lightning's missing-monitor error names the metrics logged; say which key chooses the monitored one."""
    if "could not find the monitored key" not in str(error):
        return ""
    return (
        " (perfkit's checkpoint and early stopping follow monitor=...: set it to a metric your module logs)"
    )


_LOST_CONTACT = ("connection closed by peer", "connection reset by peer", "broken pipe", "timed out")


def _lost_contact(error: BaseException) -> bool:
    """Whether ``error`` is a collective failing because another process went away."""
    name = type(error).__name__
    text = str(error).lower()
    return name in ("DistBackendError", "DistNetworkError") or any(sign in text for sign in _LOST_CONTACT)


def _lost_contact_reason(error: BaseException) -> str:
    """gloo's "[.../pair.cc:545] Read error [127.0.0.1]:20905: Connection reset by peer. This is ..."
    without the source location and the advice."""
    return re.sub(r"^\[[^\]]*\]\s*", "", error_line(error)).split(". ")[0][:160]


def _interrupted_note(run_dir: Path) -> str:
    """What a run stopped by SIGTERM left behind, and how to continue it."""
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        return (
            f"stopped by SIGTERM; {last} (the end of the last finished epoch) is kept: continue with "
            f"resume=auto hydra.run.dir={run_dir}"
        )
    return f"stopped by SIGTERM before the first epoch ended; no checkpoint to resume from in {run_dir}"

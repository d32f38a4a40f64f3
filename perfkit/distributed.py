"""Checks that turn DDP's slow or confusing failures into one clear line before any process starts.

Lightning launches and connects the processes; these checks cover what it leaves to the user: a busy
``MASTER_PORT`` (a traceback from TCPStore), Hydra multirun with script-relaunching DDP (every child
would re-run the whole sweep), and external launchers whose ranks would each pick their own
timestamped run directory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from typing import Any

from perfkit.errors import ConfigError

RUN_ID_VARIABLE = "PERFKIT_RUN_ID"


def launches_child_scripts(trainer: Any) -> bool:
    """True when Lightning will start this job's other ranks by re-running the command line."""
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    strategy = trainer.strategy
    return (
        isinstance(getattr(strategy, "launcher", None), _SubprocessScriptLauncher)
        and trainer.num_devices > 1
        and not strategy.cluster_environment.creates_processes_externally
    )


def check_master_port(trainer: Any) -> None:
    """Refuse a ``MASTER_PORT`` that another program already listens on (Lightning picks a free port
    itself when the variable is unset)."""
    from lightning.fabric.plugins.environments import LightningEnvironment

    port_text = os.environ.get("MASTER_PORT")
    environment = getattr(trainer.strategy, "cluster_environment", None)
    if trainer.world_size <= 1 or port_text is None or not isinstance(environment, LightningEnvironment):
        return
    if environment.node_rank() != 0 or environment.global_rank() != 0:
        return  # only the main node's rank 0 listens on it
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(
            f"MASTER_PORT={port_text!r} is not valid: use a port number in 1..65535, or unset it"
        )
    if port_in_use(int(port_text)):
        raise ConfigError(
            f"MASTER_PORT={port_text} is already in use on this machine: unset MASTER_PORT to let Lightning "
            "pick a free port, or choose another"
        )


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # a port left in TIME_WAIT by an earlier job is free for a new listener; a live listener is not
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", port))
        except OSError as error:
            return error.errno == errno.EADDRINUSE
    return False


def check_multirun(trainer: Any) -> None:
    """Refuse Hydra multirun with a strategy that re-runs the command line for each rank."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    if launches_child_scripts(trainer):
        raise ConfigError(
            "Hydra multirun (-m) cannot use strategy=ddp with several devices: each DDP process would "
            "re-run the whole sweep; use strategy=ddp_spawn with -m, or start one run per configuration"
        )


def check_shared_run_dir() -> None:
    """Under torchrun or SLURM every rank composes its own config: without a shared run id each would
    pick its own timestamped run directory, so checkpoints and logs would scatter."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    external = TorchElasticEnvironment.detect() or SLURMEnvironment.detect()
    if not external or int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1"))) <= 1:
        return
    if os.environ.get(RUN_ID_VARIABLE) or not HydraConfig.initialized():
        return
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        return  # a sweep job's directory is fixed by the launcher (submitit) and shared by its ranks
    if any(override.startswith("hydra.run.dir=") for override in HydraConfig.get().overrides.hydra):
        return
    launcher = "torchrun" if TorchElasticEnvironment.detect() else "SLURM"
    raise ConfigError(
        f"under {launcher} every rank needs the same run directory: set {RUN_ID_VARIABLE} "
        "(scripts/torchrun.sh and scripts/slurm.sbatch do) or hydra.run.dir=..."
    )


_job: dict[str, Any] = {}


def remember_trainer(trainer: Any) -> None:
    """Keep the trainer whose ranks :func:`rank_description` names if the job fails."""
    _job["trainer"] = trainer


def rank_description() -> str:
    """``rank 1 of 2`` in a distributed job, empty otherwise."""
    trainer = _job.get("trainer")
    if trainer is not None:
        world_size, rank = trainer.world_size, trainer.global_rank
    else:  # failed before a trainer existed: torchrun and SLURM say who we are in the environment
        world_size = int(os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS") or 1)
        rank = int(os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or 0)
    return f"rank {rank} of {world_size}" if world_size > 1 else ""


HEARTBEATS = ".heartbeats"  # in the run directory: one small JSON file per rank


def remember_heartbeats(run_dir: str) -> None:
    _job["heartbeats"] = run_dir


def write_heartbeat(run_dir: str, rank: int, step: int) -> None:
    import json
    import time
    from pathlib import Path

    folder = Path(run_dir) / HEARTBEATS
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".rank-{rank}.tmp"
    temporary.write_text(json.dumps({"rank": rank, "step": step, "time": time.time(), "pid": os.getpid()}))
    temporary.replace(folder / f"rank-{rank}.json")


def remove_heartbeat(run_dir: str, rank: int) -> None:
    from pathlib import Path

    folder = Path(run_dir) / HEARTBEATS
    (folder / f"rank-{rank}.json").unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()  # the last rank to finish removes the folder


def timed_out(error: BaseException) -> bool:
    """Whether ``error`` is a collective giving up on a peer that did not answer in time (gloo's
    "Timed out waiting 600000ms for recv operation", NCCL's watchdog "Watchdog caught collective
    operation timeout")."""
    text = str(error)
    return (
        "Timed out waiting" in text or "collective operation timeout" in text or "timed out" in text.lower()
    )


def stuck_rank(now: float | None = None) -> str:
    """``rank 1 of 2 (last noted progress 620 s ago, at step 40)``: of the other ranks, the one whose
    heartbeat is oldest, from the files :class:`perfkit.callbacks.Heartbeat` writes; empty when there
    are none."""
    import json
    import time
    from pathlib import Path

    run_dir, trainer = _job.get("heartbeats"), _job.get("trainer")
    if run_dir is None:
        return ""
    beats = []
    for path in (Path(run_dir) / HEARTBEATS).glob("rank-*.json"):
        with contextlib.suppress(OSError, ValueError):
            beats.append(json.loads(path.read_text()))
    if len(beats) < 2:
        return ""
    # this process gave up waiting, so it is alive; its own heartbeat may still be the oldest (beats are
    # written at most once a second, and it has been blocked in the collective since)
    own = getattr(trainer, "global_rank", None)
    others = [beat for beat in beats if beat.get("rank") != own] or beats
    oldest = min(others, key=lambda beat: beat["time"])
    ago = (now or time.time()) - oldest["time"]
    world = f" of {trainer.world_size}" if trainer is not None else ""
    return f"rank {oldest['rank']}{world} (last noted progress {ago:.0f} s ago, at step {oldest['step']})"


def end_stuck_children() -> None:
    """SIGKILL the ranks this process launched that are still there (stopped or stuck): with the job
    failed, nobody would ever end them."""
    trainer: Any = _job.get("trainer")
    processes = getattr(getattr(getattr(trainer, "strategy", None), "launcher", None), "procs", None) or []
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(OSError):
                process.kill()


def dead_ranks(wait_s: float = 10.0) -> list[str]:
    """The DDP ranks this process launched that have died, each as ``rank N of M (how)``.

    When a rank dies, the others only notice a lost connection (gloo's "Connection reset by peer"),
    which names the wrong process; the launching process can see which child exited. Children get up
    to ``wait_s`` seconds to finish dying.
    """
    import time

    trainer: Any = _job.get("trainer")
    processes = getattr(getattr(getattr(trainer, "strategy", None), "launcher", None), "procs", None)
    if trainer is None or not processes:
        return []
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and all(process.poll() is None for process in processes):
        time.sleep(0.1)
    first_rank = trainer.node_rank * trainer.num_devices
    dead = []
    for local_rank, process in enumerate(processes, start=1):
        code = process.poll()
        if code is None or code == 0:
            continue
        dead.append(f"rank {first_rank + local_rank} of {trainer.world_size} ({exit_description(code)})")
    return dead


def exit_description(code: int) -> str:
    """How a process ended, from its exit status (negative: the signal that killed it)."""
    import signal

    if code >= 0:
        return f"exit status {code}"
    how = f"killed by {signal.Signals(-code).name}"
    return how + (", e.g. by the out-of-memory killer" if code == -signal.SIGKILL else "")


class WorkerError(RuntimeError):
    """A ``ddp_spawn`` worker failed. The launching process only gets the text of the worker's
    traceback, so the original exception is rebuilt from it: ``error_type`` and ``message`` from its
    last line, ``traceback`` the worker's own (empty when the process died without a Python error)."""

    def __init__(self, rank: str, error_type: str, message: str, traceback: str = "") -> None:
        super().__init__(f"{error_type}: {message}" if error_type else message)
        self.rank, self.error_type, self.message, self.traceback = rank, error_type, message, traceback


def spawned_worker_error(error: BaseException) -> WorkerError | None:
    """torch's ``ProcessRaisedException``/``ProcessExitedException`` (what ``ddp_spawn`` raises in the
    launching process when a worker fails) as a :class:`WorkerError`; None for any other error."""
    from torch.multiprocessing import ProcessExitedException, ProcessRaisedException

    if not isinstance(error, ProcessRaisedException | ProcessExitedException):
        return None
    trainer: Any = _job.get("trainer")
    first_rank = trainer.node_rank * trainer.num_devices if trainer is not None else 0
    world_size = f" of {trainer.world_size}" if trainer is not None else ""
    rank = f"rank {first_rank + error.error_index}{world_size}"
    if isinstance(error, ProcessExitedException):
        return WorkerError(rank, "", f"died ({exit_description(error.exit_code)})")
    worker_traceback = str(error).split("terminated with the following error:", 1)[-1].strip("\n")
    lines = worker_traceback.rstrip().splitlines()
    # the exception's own lines follow the last frame of the traceback (frame lines are indented)
    last_frame = max((i for i, line in enumerate(lines) if line.startswith(" ")), default=-1)
    raised = " ".join(" ".join(lines[last_frame + 1 :]).split())
    name, _, message = raised.partition(": ")
    return WorkerError(rank, name.rsplit(".", 1)[-1], message, worker_traceback)


# Under ddp_spawn, fit runs in child processes and only ``trainer.callback_metrics`` travels back to
# the main one; perfkit's callbacks send their measurements home under this prefix.
_SHARED = "perfkit_shared/"


def send_to_main_process(trainer: Any, name: str, values: list[float]) -> None:
    """Make ``values`` readable by :func:`received_from_workers` in the launching process."""
    import torch

    trainer.callback_metrics[_SHARED + name] = torch.tensor(values, dtype=torch.float64)


def received_from_workers(trainer: Any, name: str) -> list[float] | None:
    """What a worker sent with :func:`send_to_main_process` (the local values without spawn)."""
    values = trainer.callback_metrics.get(_SHARED + name)
    return None if values is None else [float(v) for v in values.reshape(-1).tolist()]

"""A training run's directory: what it may overwrite, and the files it writes."""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import platform
import socket
from pathlib import Path
from typing import Any

from perfkit.errors import ConfigError

log = logging.getLogger(__name__)

# files whose presence means the directory already holds an earlier run's results
_PRECIOUS = ("metrics.json",)


RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID")


def is_launching_process() -> bool:
    """True in the process a user started, False in DDP children (Lightning's launcher, torchrun, SLURM).

    A child is recognised by its launcher's variables together, never by a lone ``RANK``: one left in
    the environment from torchrun debugging or a Kubernetes pod must not switch off the run-directory
    guard (a child skips it: its launching process holds the reservation)."""
    return not launched_by()


def launched_by() -> str | None:
    """The launcher that started this process as a non-zero rank, or None."""
    env = os.environ

    def nonzero(name: str) -> bool:
        return env.get(name) not in (None, "", "0")

    def several(name: str) -> bool:
        try:
            return int(env.get(name, "1")) > 1
        except ValueError:
            return False

    if "TORCHELASTIC_RUN_ID" in env and (nonzero("RANK") or nonzero("LOCAL_RANK")):
        return "torchrun"
    if nonzero("SLURM_PROCID") and several("SLURM_NTASKS"):
        return "SLURM"
    if nonzero("LOCAL_RANK") and several("WORLD_SIZE") and "MASTER_PORT" in env:
        return "Lightning"
    return None


def stray_rank_variables() -> list[str]:
    """Rank variables set to a non-zero value in a process no launcher started."""
    if launched_by():
        return []
    return [
        f"{name}={os.environ[name]}" for name in RANK_VARIABLES if os.environ.get(name) not in (None, "", "0")
    ]


def guard_run_dir(run_dir: Path, precious: tuple[str, ...] = _PRECIOUS, *, resume: bool = False) -> None:
    """Refuse to start in a directory holding an earlier run's results or checkpoints.

    With ``resume`` a run that has checkpoints but no results (it was interrupted) may continue.
    """
    finished = [name for name in precious if (run_dir / name).exists()]
    if finished:
        what = f"{run_dir} already holds a finished run ({', '.join(finished)})"
        if resume:
            raise ConfigError(f"{what}: there is nothing to resume; start a new run without resume=auto")
        raise ConfigError(
            f"{run_dir} already holds an earlier run ({', '.join(finished)}); perfkit never overwrites one: "
            "choose a new directory with hydra.run.dir=... or remove the old run"
        )
    checkpoints = run_dir / "checkpoints"
    if checkpoints.is_dir() and any(checkpoints.glob("*.ckpt")) and not resume:
        raise ConfigError(
            f"{run_dir} holds checkpoints of an interrupted run; continue it with resume=auto, or choose a "
            "new directory with hydra.run.dir=..."
        )


def resume_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint an interrupted run in ``run_dir`` continues from (the end of its latest epoch);
    None, said in the log, when the run never finished an epoch. Other checkpoints without
    ``last.ckpt`` are refused: continuing from one of them is a choice (``ckpt_path=``), not a resume."""
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        return last
    others = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
    if others:
        raise ConfigError(
            f"resume=auto: {last.parent} has no last.ckpt (only {', '.join(others)}), so the run cannot continue "
            f"where it stopped; give the checkpoint to start from with ckpt_path=... and a new hydra.run.dir"
        )
    log.info("resume=auto: %s has no checkpoint yet: starting the run from the beginning", run_dir)
    return None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically: a reader (or a crash) never sees half a file.

    NaN and infinities become ``null``: they are not JSON, and strict parsers reject the file.
    """
    temporary = path.with_name(f".{path.name}.tmp")
    text = json.dumps(finite_json(data), indent=2, sort_keys=False, default=str, allow_nan=False)
    try:
        temporary.write_text(text + "\n")
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise OSError(error.errno, error.strerror, str(path)) from error
    temporary.replace(path)


def finite_json(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) replaced by None, through dicts, lists, tuples."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(item) for item in value]
    return value


_LOCK_NAME = ".perfkit-run.lock"


class RunDirectory:
    """A run directory reserved for this process: a lock file created atomically (``O_EXCL``) before
    anything is written, so two runs started at the same moment can never share it.

    The lock holds ``pid host``; a lock whose process is gone (a killed run) is taken over, which is
    what ``resume=auto`` needs. :meth:`release` removes it; a finished run is then protected by its
    ``metrics.json`` (see :func:`guard_run_dir`), or the ``precious`` files given.
    """

    def __init__(self, path: Path, precious: tuple[str, ...] = _PRECIOUS, *, resume: bool = False) -> None:
        self.path = path
        try:
            path.mkdir(parents=True, exist_ok=True)
            self._lock = path / _LOCK_NAME
            self._take()
        except PermissionError as error:
            raise ConfigError(
                f"cannot write to the run directory {path} ({error.strerror}): choose a writable one with "
                "hydra.run.dir=... or paths.log_dir=..."
            ) from None
        except OSError as error:
            raise ConfigError(f"cannot use the run directory {path}: {error.strerror or error}") from None
        try:
            guard_run_dir(path, precious, resume=resume)
        except ConfigError:
            self.release()
            raise
        atexit.register(self.release)  # also when the command ends by an exception

    def _take(self) -> None:
        for _ in range(3):
            try:
                descriptor = os.open(self._lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = _lock_owner(self._lock)
                if owner is not None:
                    raise ConfigError(
                        f"{self.path} is in use by another perfkit run ({owner}); choose a new directory with "
                        f"hydra.run.dir=..., or remove {self._lock} if that run is gone"
                    ) from None
                self._lock.unlink(missing_ok=True)  # its process is gone: a killed run
                continue
            with os.fdopen(descriptor, "w") as lock:
                lock.write(f"{os.getpid()} {socket.gethostname()}\n")
            return
        raise ConfigError(f"{self.path}: could not reserve the directory (its lock file keeps reappearing)")

    def release(self) -> None:
        try:
            text = self._lock.read_text().split()
        except OSError:
            return
        if text[:1] == [str(os.getpid())]:
            self._lock.unlink(missing_ok=True)


def _lock_owner(lock: Path) -> str | None:
    """``pid N on HOST`` while the lock's process may be alive; None when it is certainly gone."""
    try:
        fields = lock.read_text().split()
    except FileNotFoundError:
        return None
    if len(fields) < 2 or not fields[0].isdigit():
        return "a run that is starting"  # created, not yet written: a live run
    pid, host = int(fields[0]), fields[1]
    if pid == os.getpid() and host == socket.gethostname():
        return None  # an earlier call in this process that ended by an exception: runs here are sequential
    if host != socket.gethostname():
        return f"pid {pid} on {host}"  # another machine's process: can't tell, assume alive
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by another user
    return f"pid {pid}"


def cache_dir() -> Path:
    """``$PERFKIT_CACHE_DIR``, default ``$XDG_CACHE_HOME/perfkit`` or ``~/.cache/perfkit``."""
    root = os.environ.get("PERFKIT_CACHE_DIR")
    if root is None:
        root = str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "perfkit")
    return Path(root)


def process_start_time() -> float:
    """When this process started, as a ``time.time()`` stamp (Linux: from /proc, 10 ms resolution);
    elsewhere, now."""
    import time

    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            # the fields after the command name (which may hold spaces); starttime is field 22
            started_ticks = int(stat.read().rpartition(")")[2].split()[19])
            age = float(uptime.read().split()[0]) - started_ticks / os.sysconf("SC_CLK_TCK")
        return time.time() - max(0.0, age)
    except (OSError, ValueError, IndexError):
        return time.time()


def environment() -> dict[str, Any]:
    """Versions and hardware that a result depends on."""
    import lightning
    import torch

    import perfkit

    info: dict[str, Any] = {
        **cpu_description(),
        "perfkit": perfkit.__version__,
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# instruction-set extensions that decide how fast int8/bf16 kernels can be on a CPU
_SIMD_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


def cpu_description() -> dict[str, Any]:
    """CPU model and the SIMD extensions it offers (from /proc/cpuinfo where available)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    return {"cpu_model": model, "cpu_simd": [flag for flag in _SIMD_FLAGS if flag in flags]}

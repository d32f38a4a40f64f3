"""A training run's directory: what it may overwrite, and the files it writes."""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import socket
import sys
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


# -- naming a new run directory -------------------------------------------------------------------


def fresh_run_dir(parent: str) -> str:
    """``parent/<PERFKIT_RUN_ID>`` when set (every rank of a torchrun/SLURM job names the same one),
    else a new ``parent/<date>_<time>`` directory, created here so that two runs started in the same
    second get two directories (the second gets a ``-2`` suffix)."""
    run_id = os.environ.get("PERFKIT_RUN_ID")
    if run_id:
        return str(Path(parent) / run_id)
    if parent in _fresh_dirs:  # the config is resolved more than once in a process
        return _fresh_dirs[parent]
    import datetime

    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    try:
        Path(parent).mkdir(parents=True, exist_ok=True)
        for attempt in range(1, 1000):
            candidate = Path(parent) / (stamp if attempt == 1 else f"{stamp}-{attempt}")
            try:
                candidate.mkdir()
            except FileExistsError:
                continue
            _fresh_dirs[parent] = str(candidate)
            return str(candidate)
    except OSError as error:
        # Hydra would print a traceback: one line, as for any other configuration error
        print(
            f"perfkit: error: cannot create a run directory under {parent} ({error.strerror or error}): "
            "choose a writable place with paths.log_dir=... or hydra.run.dir=...",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    raise SystemExit(f"perfkit: error: no free run directory name under {parent}")


_fresh_dirs: dict[str, str] = {}


def check_output_dir_overrides(program: str, argv: list[str] | None = None) -> None:
    """Refuse, in one line, a ``hydra.run.dir``/``hydra.sweep.dir`` override that can't be created:
    Hydra creates it before any perfkit code runs and would answer with a traceback."""
    for argument in sys.argv[1:] if argv is None else argv:
        key, _, value = argument.partition("=")
        if key.lstrip("+") not in ("hydra.run.dir", "hydra.sweep.dir") or "${" in value:
            continue
        if not value.strip():
            # an unset shell variable (hydra.run.dir=$RUN): Hydra would write into the current directory
            print(
                f"{program}: error: {key}= is empty (an unset shell variable?): give a directory, or leave "
                f"{key} out for a new one under outputs/",
                file=sys.stderr,
            )
            raise SystemExit(2)
        problem = _unusable_directory(Path(value).expanduser().absolute())
        if problem:
            shown = value if len(value) <= 100 else f"{value[:60]}...({len(value)} characters)"
            print(f"{program}: error: {key}={shown}: {problem}; choose another directory", file=sys.stderr)
            raise SystemExit(2)


def _unusable_directory(path: Path) -> str | None:
    """Why a run directory at ``path`` cannot be created or written, or None."""
    name_max = 255
    with contextlib.suppress(OSError):
        name_max = os.pathconf("/", "PC_NAME_MAX")
    long_part = next((part for part in path.parts if len(part.encode()) > name_max), None)
    if long_part is not None:
        return f"a name in it is {len(long_part.encode())} bytes long, more than the file system's {name_max}"
    if len(str(path).encode()) >= 4096:
        return f"the path is {len(str(path).encode())} bytes long, more than the system's 4095"
    try:
        existing = next(p for p in (path, *path.parents) if p.exists() or p.is_symlink())
    except OSError as error:
        return error.strerror or str(error)
    if existing.is_symlink() and not existing.exists():
        return f"{existing} is a symbolic link to {os.readlink(existing)}, which does not exist"
    if not existing.is_dir():
        return f"{existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None

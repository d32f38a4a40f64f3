"""A training run's directory: what it may overwrite, and the files it writes."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from perfkit.config import ConfigError

# files whose presence means the directory already holds an earlier run's results
_PRECIOUS = ("metrics.json",)


def is_launching_process() -> bool:
    """True in the process a user started, False in DDP children (Lightning's launcher, torchrun, SLURM)."""
    for variable in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        value = os.environ.get(variable)
        if value not in (None, "", "0"):
            return False
    return True


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
    """The checkpoint an interrupted run in ``run_dir`` continues from (the end of its latest epoch)."""
    last = run_dir / "checkpoints" / "last.ckpt"
    return last if last.is_file() else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically: a reader (or a crash) never sees half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    temporary.replace(path)


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

"""The machine a result was measured on: versions, CPU model and SIMD features, the cache directory,
this process's start time."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import perfkit
from perfkit.errors import ConfigError


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


NO_CUDA = "CUDA is not available on this machine"


def missing_device(device: Any) -> str | None:
    """Why ``device`` (a ``torch.device``) cannot run here, or None: the one check every command uses."""
    import torch  # here, not at import: the CLI reads this module before it needs torch

    return NO_CUDA if device.type == "cuda" and not torch.cuda.is_available() else None


def resolve_device(name: str, key: str, *, instead: str = "") -> Any:
    """``name`` (``auto``: CUDA when present) as a ``torch.device``; a CUDA one on a machine without
    CUDA is a ConfigError naming ``key`` and what to use instead."""
    import torch  # as above

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    problem = missing_device(device)
    if problem:
        raise ConfigError(f"{key}={name}: {problem}; use {instead or key + '=cpu'}")
    return device

"""How many DataLoader worker processes each rank gets: capped to its share of the cores, and for
``num_workers=auto`` measured on the real dataset and cached per dataset, batch size and machine.

Guessing (``os.cpu_count()``, "4 per GPU") is wrong in both directions: in-memory tensors load fastest
with no workers at all (IPC costs more than indexing), while Python-side decoding wants one worker per
free core. So ``auto`` times a few batches for each candidate and keeps the fastest.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from perfkit.system import cache_dir, cpu_description

log = logging.getLogger(__name__)


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, which containers and SLURM restrict)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows
        return os.cpu_count() or 1


def worker_budget(local_processes: int, cores: int | None = None) -> int:
    """Most loader workers one rank may start so that all ranks on this machine together use at most
    one worker per core."""
    return (cores or available_cores()) // max(1, local_processes)


def cap_workers(requested: int, local_processes: int, cores: int | None = None) -> int:
    """``requested``, lowered to the rank's share of the cores (with a warning saying why)."""
    cores = cores or available_cores()
    budget = worker_budget(local_processes, cores)
    if requested <= budget:
        return requested
    log.warning(
        "num_workers=%d per rank would oversubscribe the machine (%d rank(s) on this machine share %d "
        "core(s)); using %d",
        requested,
        local_processes,
        cores,
        budget,
    )
    return budget


def candidate_counts(budget: int) -> list[int]:
    """Worker counts ``auto`` tries: every count up to 4, then powers of two and the midpoints between
    them (6, 8, 12, 16, 24, ...) up to ``budget``, so a 64-core machine needs 12 timings, not 65."""
    counts = set(range(min(budget, 4) + 1)) | {budget}
    power = 4
    while power <= budget:
        counts.update(count for count in (power, power * 3 // 2) if count <= budget)
        power *= 2
    return sorted(counts)


@dataclass
class WorkerChoice:
    """The outcome of ``num_workers=auto``: the count used and the measurements behind it."""

    num_workers: int
    source: str  # "measured" or "cached"
    samples_per_s: dict[int, float] = field(default_factory=dict)

    def table(self) -> str:
        best = self.num_workers
        lines = ["num_workers  samples/s"]
        for workers, rate in sorted(self.samples_per_s.items()):
            lines.append(f"{workers:>11}  {rate:>9.0f}{'  <- chosen' if workers == best else ''}")
        return "\n".join(lines)


def measure_worker_counts(
    make_loader: Callable[[int], Iterable[Any]],
    candidates: Iterable[int],
    *,
    batch_size: int,
    num_batches: int,
    rounds: int = 2,
) -> dict[int, float]:
    """Median samples/s of ``make_loader(workers)`` over ``rounds`` for each candidate.

    Each timing starts the iterator (worker start-up is part of what an epoch costs) and reads
    ``num_batches`` batches; candidates are interleaved round by round so drift on a shared machine
    hits all of them alike.
    """
    candidates = list(candidates)
    rates: dict[int, list[float]] = {workers: [] for workers in candidates}
    for round_index in range(rounds):
        order = candidates if round_index % 2 == 0 else candidates[::-1]
        for workers in order:
            batches = iter(make_loader(workers))
            started = time.perf_counter()
            seen = 0
            for _ in range(num_batches):
                try:
                    next(batches)
                except StopIteration:
                    break
                seen += 1
            elapsed = time.perf_counter() - started
            del batches  # stops the workers before the next candidate starts its own
            rates[workers].append(seen * batch_size / elapsed if elapsed > 0 else float("inf"))
    return {workers: statistics.median(values) for workers, values in rates.items()}


def fastest(samples_per_s: dict[int, float], tolerance: float = 0.05) -> int:
    """The fewest workers within ``tolerance`` of the best rate: an extra process must earn its keep."""
    best = max(samples_per_s.values())
    return min(workers for workers, rate in samples_per_s.items() if rate >= best * (1 - tolerance))


def cache_path() -> Path:
    """``num_workers.json`` in :func:`perfkit.system.cache_dir`."""

    return cache_dir() / "num_workers.json"


def cache_key(dataset: str, batch_size: int, local_processes: int) -> str:
    """What the best worker count depends on: the data, the batch, and this machine's share of cores."""
    import torch

    machine = f"{cpu_description()['cpu_model']}|{available_cores()} cores|{platform.node()}"
    return f"{dataset}|batch={batch_size}|ranks_per_machine={local_processes}|{machine}|torch={torch.__version__}"


def read_cached(key: str, path: Path | None = None) -> WorkerChoice | None:
    try:
        entry = json.loads((path or cache_path()).read_text()).get(key)
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("num_workers"), int):
        return None
    rates = {int(workers): float(rate) for workers, rate in entry.get("samples_per_s", {}).items()}
    return WorkerChoice(entry["num_workers"], "cached", rates)


def write_cached(key: str, choice: WorkerChoice, path: Path | None = None) -> None:
    """Add ``choice`` to the cache file (atomically; a failure to write only costs a re-measurement)."""
    path = path or cache_path()
    try:
        entries = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        entries = {}
    entries[key] = {**asdict(choice), "source": "measured", "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n")
        temporary.replace(path)
    except OSError as error:
        log.warning("could not cache the num_workers choice in %s: %s", path, error)

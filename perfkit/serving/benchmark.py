"""``serve_benchmark``: every candidate measured under the same conditions."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from perfkit.optim.report import serialized_size
from perfkit.serving.candidate import KINDS, Candidate, eager_of, error_summary
from perfkit.serving.cold_start import _cold_start
from perfkit.serving.report import ServeReport, ServeRow
from perfkit.serving.timing import _rows, _steady_state, _under_load
from perfkit.system import environment


def serve_benchmark(
    candidates: list[Candidate],
    example_inputs: tuple[torch.Tensor, ...],
    *,
    batch_size: int = 64,
    latency_calls: int = 200,
    rounds: int = 20,
    cold_starts: int = 1,
    concurrency: int = 0,
    threads: int = 1,
    device: str | torch.device = "cpu",
    work_dir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> ServeReport:
    """Measure every candidate (see the module's docstring). ``example_inputs``: the network's inputs,
    batched on dim 0; they are cut or repeated to batch 1 and ``batch_size``. ``cold_starts``: fresh
    processes per candidate (the median kept; 0: none). ``device``: where the
    inputs go (the candidates must already run there); on CUDA each timed call is synchronised and
    the serving process moves the model there. A candidate that fails a step keeps its other
    figures and says why in ``errors``."""
    say = progress or (lambda _: None)
    _check_candidates(candidates)
    rows = {c.name: ServeRow(c.name, c.kind, _size(c), c.accuracy, notes=list(c.notes)) for c in candidates}
    device = torch.device(device)
    one = tuple(_rows(t, 1) for t in example_inputs)
    many = tuple(_rows(t, batch_size).to(device) for t in example_inputs)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(dir=work_dir) as scratch:
            for candidate in candidates if cold_starts else ():  # 0: in-process figures only
                say(f"cold start: {candidate.name}")
                _cold_start(candidate, rows[candidate.name], one, threads, cold_starts, Path(scratch), device)
        one = tuple(t.to(device) for t in one)
        runnable = _runnable(candidates, one, rows)
        say(f"batch-1 latency: {len(runnable)} candidates x {latency_calls} calls, interleaved")
        calls = (
            _steady_state(runnable, rows, one, many, candidates[0].name, latency_calls, rounds, device)
            if runnable
            else 0
        )
        for name in runnable if concurrency else ():
            say(f"under load: {name}, {concurrency} callers")
            _under_load(runnable[name], one, concurrency, latency_calls, rows[name])
    finally:
        torch.set_num_threads(previous)
    settings = {
        "batch_size": batch_size,
        "latency_calls": latency_calls,
        "rounds": rounds,
        "cold_starts": cold_starts,
        "concurrency": concurrency,
        "threads": threads,
        "device": str(device),
        "calls_per_throughput_sample": calls,
    }
    return ServeReport(list(rows.values()), settings, environment())


def _check_candidates(candidates: list[Candidate]) -> None:
    if not candidates:
        raise ValueError("serve_benchmark: no candidates")
    names = [c.name for c in candidates]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(
            f"serve_benchmark: candidate names must differ; given more than once: {', '.join(twice)}"
        )
    unknown = sorted({c.kind for c in candidates} - set(KINDS))
    if unknown:
        raise ValueError(
            f"serve_benchmark: unknown kind(s) {', '.join(unknown)}; allowed: {', '.join(KINDS)}"
        )


def _size(candidate: Candidate) -> int | None:
    if candidate.path:
        return Path(candidate.path).stat().st_size
    if isinstance(candidate.module, nn.Module):
        return serialized_size(eager_of(candidate.module))
    return None


def _runnable(
    candidates: list[Candidate], one: tuple[torch.Tensor, ...], rows: dict[str, ServeRow]
) -> dict[str, Any]:
    """The candidates that answer a batch-1 call in this process (compiling happens here)."""
    ready = {}
    for candidate in candidates:
        try:
            with torch.inference_mode():
                candidate.module(*one)
            ready[candidate.name] = candidate.module
        except Exception as error:
            rows[candidate.name].errors.append(f"fails in this process: {error_summary(error)}")
    return ready

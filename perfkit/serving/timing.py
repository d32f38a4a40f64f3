"""In-process serving figures: batch-1 latency percentiles and throughput with every candidate
interleaved call by call, and tail latency under concurrent callers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from perfkit.measure import speedup, time_interleaved
from perfkit.serving.candidate import error_summary
from perfkit.serving.report import ServeRow


def _steady_state(
    runnable: dict[str, Any],
    rows: dict[str, ServeRow],
    one: tuple[torch.Tensor, ...],
    many: tuple[torch.Tensor, ...],
    baseline: str,
    latency_calls: int,
    rounds: int,
    device: torch.device,
) -> int:
    """Batch-1 percentiles (interleaved call by call) and throughput at ``len(many[0])`` (interleaved
    round by round, several calls per sample when one is short), with the paired speed-up over
    ``baseline``; returns the calls per throughput sample."""
    with torch.inference_mode():
        single = time_interleaved(
            {n: _bound(m, one) for n, m in runnable.items()}, rounds=latency_calls, warmup=3, device=device
        )
        # several calls per sample where one call is too short to time alone (a small MLP: ~1 ms)
        calls = _calls_per_sample(runnable.get(baseline, next(iter(runnable.values()))), many)
        batched = time_interleaved(
            {n: _bound(m, many) for n, m in runnable.items()},
            rounds=rounds,
            warmup=2,
            calls_per_round=calls,
            device=device,
        )
    for name in runnable:
        row = rows[name]
        row.latency_ms_p50 = single[name].quantile_ms(0.5)
        row.latency_ms_p90 = single[name].quantile_ms(0.9)
        row.latency_ms_p99 = single[name].quantile_ms(0.99)
        row.throughput_per_s = len(many[0]) / (batched[name].median_ms / 1e3)
        if baseline in batched:
            ratio = speedup(batched[baseline], batched[name])
            row.speedup, row.speedup_p10, row.speedup_p90 = ratio.median, ratio.low, ratio.high
    return calls


def _calls_per_sample(module: Any, inputs: tuple[torch.Tensor, ...], target_s: float = 0.01) -> int:
    """Calls per timed sample so that one sample lasts about ``target_s`` (at most 50)."""
    sync = torch.cuda.synchronize if inputs[0].is_cuda else (lambda: None)
    with torch.inference_mode():
        module(*inputs)  # compiled candidates compile at their first call
        sync()
        started = time.perf_counter()
        module(*inputs)
        sync()
    return max(1, min(50, round(target_s / max(time.perf_counter() - started, 1e-6))))


def _rows(tensor: torch.Tensor, size: int) -> torch.Tensor:
    repeats = -(-size // len(tensor))
    return tensor.detach().cpu().repeat(repeats, *([1] * (tensor.dim() - 1)))[:size].contiguous()


def _bound(module: Any, inputs: tuple[torch.Tensor, ...]) -> Callable[[], Any]:
    return lambda: module(*inputs)


def _under_load(module: Any, one: tuple[torch.Tensor, ...], callers: int, calls: int, row: ServeRow) -> None:
    """``callers`` threads each make ``calls // callers`` batch-1 calls at once."""
    latencies: list[float] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    each = max(1, calls // callers)

    def call() -> None:
        own = []
        try:
            with torch.inference_mode():
                for _ in range(each):
                    started = time.perf_counter()
                    module(*one)
                    own.append(time.perf_counter() - started)
        except BaseException as error:
            errors.append(error)
        with lock:
            latencies.extend(own)

    workers = [threading.Thread(target=call) for _ in range(callers)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    if errors:
        row.errors.append(f"fails under load: {error_summary(errors[0])}")
        return
    ordered = sorted(latencies)
    row.loaded_latency_ms_p50 = ordered[len(ordered) // 2] * 1e3
    row.loaded_latency_ms_p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))] * 1e3
    row.loaded_throughput_per_s = len(ordered) / elapsed

"""Timing in one place: warm-up, variants interleaved round by round, device sync, robust statistics.

On a shared, drifting machine a ratio is only trustworthy when both sides are measured in the same
moments, so every round times each variant once (in a rotating order) and speed-ups are computed
from the per-round pairs, not from two separate runs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.benchmark import Measurement, TaskSpec


@dataclass(frozen=True)
class Timing:
    """Per-call seconds of one variant over all rounds."""

    name: str
    seconds: list[float]

    @property
    def measurement(self) -> Measurement:
        """torch.utils.benchmark's view of the same samples (median, IQR, ...)."""
        spec = TaskSpec(stmt=self.name, setup="", description=self.name)
        return Measurement(number_per_run=1, raw_times=self.seconds, task_spec=spec)

    @property
    def median_ms(self) -> float:
        return self.measurement.median * 1e3

    @property
    def iqr_ms(self) -> float:
        return self.measurement.iqr * 1e3

    @property
    def p90_ms(self) -> float:
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))] * 1e3


@dataclass(frozen=True)
class Speedup:
    """``baseline / variant`` per round: median and the 10th-90th percentile range of those ratios."""

    median: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.median:.2f}x ({self.low:.2f}-{self.high:.2f})"


def time_interleaved(
    variants: Mapping[str, Callable[[], Any]],
    *,
    rounds: int = 30,
    warmup: int = 3,
    calls_per_round: int = 1,
    device: torch.device | str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Timing]:
    """Time each zero-argument callable ``rounds`` times, all variants once per round.

    ``warmup`` untimed calls per variant come first (compilation, caches, allocator). Each timed
    sample is the mean of ``calls_per_round`` back-to-back calls, the device synchronised around it.
    """
    if rounds < 1 or warmup < 0 or calls_per_round < 1:
        raise ValueError("rounds and calls_per_round must be >= 1 and warmup >= 0")
    sync = _synchronizer(torch.device(device))
    names = list(variants)
    for name in names:
        for _ in range(warmup):
            variants[name]()
        sync()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)  # rotate so no variant always runs first (cache, turbo state)
        for name in names[shift:] + names[:shift]:
            function = variants[name]
            sync()
            start = time.perf_counter()
            for _ in range(calls_per_round):
                function()
            sync()
            samples[name].append((time.perf_counter() - start) / calls_per_round)
        if progress is not None:
            progress(index + 1, rounds)
    return {name: Timing(name, seconds) for name, seconds in samples.items()}


def speedup(baseline: Timing, variant: Timing) -> Speedup:
    """Paired per-round ratios ``baseline / variant`` (valid because the rounds were interleaved)."""
    ratios = sorted(b / v for b, v in zip(baseline.seconds, variant.seconds, strict=True))
    deciles = statistics.quantiles(ratios, n=10, method="inclusive") if len(ratios) > 1 else ratios * 9
    return Speedup(median=statistics.median(ratios), low=deciles[0], high=deciles[-1])


def _synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None

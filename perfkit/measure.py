"""Timing in one place: warm-up, variants interleaved round by round, device sync, robust statistics.

On a shared, drifting machine a ratio is only trustworthy when both sides are measured in the same
moments, so every round times each variant once (in a rotating order) and speed-ups are computed
from the per-round pairs, not from two separate runs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from torch.utils.benchmark import Measurement


@dataclass(frozen=True)
class Timing:
    """Per-call seconds of one variant over all rounds."""

    name: str
    seconds: list[float]

    @property
    def measurement(self) -> Measurement:
        """torch.utils.benchmark's view of the same samples (median, IQR, ...)."""
        # its import pulls in cpp_extension, which warns "No CUDA runtime is found" on CPU-only machines
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        from torch.utils.benchmark import Measurement, TaskSpec

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
        return self.quantile_ms(0.9)

    def quantile_ms(self, q: float) -> float:
        """The ``q`` quantile of the samples (nearest rank), in milliseconds."""
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1e3


@dataclass(frozen=True)
class Speedup:
    """``baseline / variant`` per round: median, the 10th-90th percentile range of those ratios and a
    distribution-free 95% confidence interval of their median (binomial order statistics)."""

    median: float
    low: float
    high: float
    ci_low: float = float("nan")
    ci_high: float = float("nan")

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
    median = statistics.median(ratios)
    ci_low, ci_high = median_confidence_interval(ratios)
    return Speedup(median=median, low=deciles[0], high=deciles[-1], ci_low=ci_low, ci_high=ci_high)


def median_confidence_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free interval for the median (scipy's quantile test); NaN with under 6 samples."""
    from scipy.stats import quantile_test

    median = statistics.median(values)
    interval = quantile_test(list(values), q=median, p=0.5).confidence_interval(confidence)
    return float(interval.low), float(interval.high)


def ratio_confidence_interval(ratios: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the geometric mean of paired ratios (works from 2 rounds, where the
    distribution-free median interval needs 6); NaN with fewer."""
    import math

    from scipy.stats import t

    if len(ratios) < 2:
        return math.nan, math.nan
    logs = [math.log(r) for r in ratios]
    mean, error = statistics.mean(logs), statistics.stdev(logs) / math.sqrt(len(logs))
    half = float(t.ppf(0.5 + confidence / 2, len(logs) - 1)) * error
    return math.exp(mean - half), math.exp(mean + half)


def peak_memory_bytes(function: Callable[[], Any], device: torch.device | str = "cpu") -> int:
    """Peak bytes one call allocates above what was allocated before it (activations, workspace,
    gradients; the weights already in memory are not counted).

    CUDA reads the caching allocator's peak; CPU replays the profiler's allocation events in order.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        function()
        torch.cuda.synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - before)
    from torch.profiler import ProfilerActivity, profile

    with (
        quiet_profiler_logs(),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler,
    ):
        function()
    events = [e for e in profiler.profiler.kineto_results.events() if e.name() == "[memory]"]
    allocated = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        if event.device_type() == torch._C._autograd.DeviceType.CPU:
            allocated += event.nbytes()
            peak = max(peak, allocated)
    return peak


@contextlib.contextmanager
def quiet_profiler_logs() -> Iterator[None]:
    """Hide the profiler's C++ log lines (kineto prints several per session, even on success)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def accuracy(
    model: torch.nn.Module, batches: Iterable[tuple[Any, torch.Tensor]], device: torch.device
) -> float:
    """Top-1 accuracy of ``model`` in eval mode over labelled batches."""
    correct = total = 0
    model.eval()
    with torch.inference_mode():
        for images, labels in batches:
            predictions = model(images.to(device)).argmax(dim=1).cpu()
            correct += int((predictions == labels).sum())
            total += len(labels)
    if total == 0:
        raise ValueError("eval_data is empty")
    return correct / total


def output_drift(reference: Any, output: Any, *, classes: bool = False) -> dict[str, float]:
    """How far ``output`` is from ``reference``: the largest absolute difference relative to the
    reference's scale and, for class scores (``classes``, N x C), the share of rows whose argmax agrees."""
    ref = _first_tensor(reference)
    out = _first_tensor(output)
    if ref is None or out is None or ref.shape != out.shape:
        return {}
    ref, out = ref.detach().float().cpu(), out.detach().float().cpu()
    scale = float(ref.abs().max()) or 1.0
    drift = {"max_abs_diff_relative": round(float((ref - out).abs().max()) / scale, 6)}
    if not bool(torch.isfinite(out).all()):
        drift["non_finite"] = 1.0
    if classes and ref.dim() == 2 and ref.shape[1] > 1:
        drift["argmax_agreement"] = round(float((ref.argmax(1) == out.argmax(1)).float().mean()), 4)
    return drift


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, list | tuple):
        return next((t for t in map(_first_tensor, value) if t is not None), None)
    if isinstance(value, dict):
        return next((t for t in map(_first_tensor, value.values()) if t is not None), None)
    return None


# --- how busy the machine is ------------------------------------------------------------------

# torch.utils.benchmark warns when a measurement's IQR exceeds a tenth of its median
NOISY_DISPERSION = 0.1


def dispersion(timing: Timing) -> float:
    """IQR / median of a variant's samples: 0.1 or more is what torch.utils.benchmark calls noisy."""
    median = timing.median_ms
    return timing.iqr_ms / median if median > 0 else math.inf


def load_snapshot() -> dict[str, float]:
    """The load average and the CPU time spent so far, by the whole machine and by this process
    with its children (from /proc; empty where there is none), for :func:`machine_load`."""
    snapshot: dict[str, float] = {"time": time.monotonic()}
    with contextlib.suppress(OSError, ValueError, IndexError):
        snapshot["load_1min"] = os.getloadavg()[0]
        ticks = os.sysconf("SC_CLK_TCK")
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        idle = int(fields[3]) + int(fields[4])  # idle + iowait
        snapshot["machine_busy_s"] = (sum(int(f) for f in fields[:8]) - idle) / ticks
        own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        snapshot["own_busy_s"] = (
            sum(int(own[i]) for i in (11, 12, 13, 14)) / ticks
        )  # utime stime cutime cstime
    return snapshot


def machine_load(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """What else ran while a measurement did: load averages, and the share of the machine's CPU
    that other processes used in between (0.5 on 2 cores: one core's worth)."""
    load: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "load_1min_before": before.get("load_1min"),
        "load_1min_after": after.get("load_1min"),
    }
    wall = after["time"] - before["time"]
    if wall > 0 and all(k in before and k in after for k in ("machine_busy_s", "own_busy_s")):
        others = (after["machine_busy_s"] - before["machine_busy_s"]) - (
            after["own_busy_s"] - before["own_busy_s"]
        )
        load["other_cpu_share"] = round(max(0.0, others) / (wall * (os.cpu_count() or 1)), 3)
    return load


BUSY_SHARE = 0.2  # other processes used a fifth of the CPU: latencies are not this code's alone


def busy_sentence(load: dict[str, Any] | None) -> str | None:
    """One line for a report when the machine was busy, or None."""
    load = load or {}
    share = load.get("other_cpu_share")
    if share is None or share < BUSY_SHARE:
        return None
    return (
        f"**Busy machine**: other processes used {share:.0%} of its {load.get('cpus')} CPUs during the run "
        f"(load average {load.get('load_1min_before')} before, {load.get('load_1min_after')} after). Speed-ups "
        "are paired round by round, but latencies are slower than on an idle machine and cells are noisier."
    )

"""perfkit.measure: interleaving, warm-up and statistics (on a fake clock: deterministic), peak memory."""

from __future__ import annotations

import math

import pytest
import torch

from perfkit import measure
from perfkit.measure import Timing, median_confidence_interval, peak_memory_bytes, speedup, time_interleaved
from tests.helpers import FakeClock


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(measure.time, "perf_counter", lambda: fake.now)
    return fake


def test_variants_are_interleaved_after_warmup(clock: FakeClock) -> None:
    timings = time_interleaved({"a": clock.work("a", 0.002), "b": clock.work("b", 0.001)}, rounds=4, warmup=2)
    assert clock.calls[:4] == ["a", "a", "b", "b"]  # warm-up, untimed
    assert clock.calls[4:] == ["a", "b", "b", "a", "a", "b", "b", "a"]  # rotating order
    assert timings["a"].seconds == pytest.approx([0.002] * 4)
    assert timings["b"].median_ms == pytest.approx(1.0)


def test_calls_per_round_average(clock: FakeClock) -> None:
    timings = time_interleaved({"a": clock.work("a", 0.003)}, rounds=2, warmup=0, calls_per_round=5)
    assert len(clock.calls) == 10
    assert timings["a"].seconds == pytest.approx([0.003, 0.003])


def test_speedup_uses_paired_rounds() -> None:
    # the machine slows down 10x halfway; per-round ratios stay 2x, pooled medians would not care
    baseline = Timing("base", [0.002, 0.002, 0.020, 0.020])
    variant = Timing("fast", [0.001, 0.001, 0.010, 0.010])
    result = speedup(baseline, variant)
    assert (result.median, result.low, result.high) == pytest.approx((2.0, 2.0, 2.0))
    assert str(result) == "2.00x (2.00-2.00)"


def test_statistics() -> None:
    timing = Timing("t", [i / 1000 for i in (7, 1, 2, 3, 4, 5, 6, 8, 9, 100)])
    assert timing.median_ms == pytest.approx(5.5)
    assert timing.p90_ms == pytest.approx(9.0)  # nearest rank: one outlier does not move it
    assert timing.iqr_ms == pytest.approx(timing.measurement.iqr * 1e3)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="rounds and calls_per_round must be >= 1"):
        time_interleaved({"a": lambda: None}, rounds=0)


def test_ratio_interval_is_a_t_interval_of_the_geometric_mean() -> None:
    import math

    low, high = measure.ratio_confidence_interval([1.2, 1.2, 1.2])
    assert low == pytest.approx(1.2) and high == pytest.approx(1.2)
    ratios = [0.9, 1.0, 1.1, 1.05]
    low, high = measure.ratio_confidence_interval(ratios)
    geometric_mean = math.exp(sum(map(math.log, ratios)) / len(ratios))
    assert low < geometric_mean < high
    # the symmetric interval of the logs: a ratio and its reciprocal give reciprocal bounds
    inverse = measure.ratio_confidence_interval([1 / r for r in ratios])
    assert inverse[0] == pytest.approx(1 / high) and inverse[1] == pytest.approx(1 / low)
    assert all(math.isnan(bound) for bound in measure.ratio_confidence_interval([1.3]))


def test_speedup_ratio_direction_and_interval() -> None:
    baseline = Timing("a", [0.010, 0.011, 0.009, 0.010, 0.012, 0.010, 0.010, 0.011])
    twice_as_fast = Timing("b", [t / 2 for t in baseline.seconds])
    ratio = speedup(baseline, twice_as_fast)
    assert ratio.median == pytest.approx(2.0)
    assert ratio.ci_low == pytest.approx(2.0) and ratio.ci_high == pytest.approx(2.0)


def test_median_confidence_interval_brackets_the_median() -> None:
    values = [1.0, 1.2, 0.9, 1.1, 1.05, 0.95, 1.3, 0.8, 1.0, 1.15]
    low, high = median_confidence_interval(values)
    assert min(values) <= low <= sorted(values)[4] <= high <= max(values)
    assert all(math.isnan(v) for v in median_confidence_interval([1.0, 2.0, 3.0]))


def test_peak_memory_counts_what_one_call_allocates() -> None:
    size = 4 * 2**20

    def allocate() -> None:
        a = torch.empty(size, dtype=torch.uint8)
        b = torch.empty(size, dtype=torch.uint8)
        del a, b

    peak = peak_memory_bytes(allocate)
    assert 2 * size <= peak < 2 * size + 2**20

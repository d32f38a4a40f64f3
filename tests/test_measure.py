"""perfkit.measure: interleaving, warm-up and statistics, on a fake clock (deterministic)."""

from __future__ import annotations

import pytest

from perfkit import measure
from perfkit.measure import Timing, speedup, time_interleaved


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[str] = []

    def work(self, name: str, seconds: float):  # type: ignore[no-untyped-def]
        def run() -> None:
            self.calls.append(name)
            self.now += seconds

        return run


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

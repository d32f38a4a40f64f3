"""How ``perfkit.tune`` decides, separate from how it measures (so the rules are unit-tested).

A candidate is one setting on one axis (``precision=bf16-mixed``, ``compile=max-autotune``, a batch
size, ...). It is measured against the baseline side by side; the rules:

- a gain counts only when the 95% confidence interval of the paired speed-up lies above 1: a gain
  smaller than the measured noise is no gain, and a slower setting is never recommended;
- a setting that changes numerics (a batch size with its learning rate, a precision) is timed to the
  baseline's held-out accuracy (less ``max_accuracy_drop`` points), from the same initial weights and
  samples: its speed-up is the ratio of those times, and one that never gets there is rejected;
- per axis the accepted candidate with the largest median speed-up wins; none accepted keeps the
  default.

:func:`run_within_budget` orders candidates by expected gain and skips the ones that no longer fit,
counting the final side-by-side run of the chosen settings (about as dear as the dearest of them).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from perfkit.errors import first_line, is_interrupt
from perfkit.tune.candidates import Candidate

ACCEPTED, REJECTED, SKIPPED, FAILED = "accepted", "rejected", "skipped", "failed"


@dataclass
class Outcome:
    """A measured (or skipped) candidate and the decision about it."""

    candidate: Candidate
    status: str = SKIPPED
    reason: str = ""
    speedup: float | None = None  # baseline time per sample / candidate time per sample (median)
    ci_low: float | None = None
    ci_high: float | None = None
    samples_per_s: float | None = None
    baseline_samples_per_s: float | None = None
    accuracy: float | None = None
    baseline_accuracy: float | None = None
    # settings that change numerics: time to reach the baseline's held-out accuracy, and the
    # optimizer steps (baseline, candidate) that took; their ratio is then the speed-up
    time_to_accuracy_s: float | None = None
    baseline_time_to_accuracy_s: float | None = None
    steps_to_accuracy: tuple[int, int] | None = None
    seconds: float = 0.0  # what measuring it cost
    # how accuracy/baseline_accuracy (the module's monitored metric) compare: higher (max) or lower better
    score_mode: str = "max"

    @property
    def accuracy_drop_points(self) -> float | None:
        """Points of a higher-is-better metric lost, or percent of a lower-is-better one (a loss) gained."""
        if self.accuracy is None or self.baseline_accuracy is None:
            return None
        if self.score_mode == "min":
            return 100.0 * (self.accuracy - self.baseline_accuracy) / max(abs(self.baseline_accuracy), 1e-12)
        return 100.0 * (self.baseline_accuracy - self.accuracy)

    def as_dict(self) -> dict[str, Any]:
        c = self.candidate
        return {
            "mode": c.mode,
            "axis": c.axis,
            "name": c.name,
            "settings": c.settings,
            "status": self.status,
            "reason": self.reason,
            "speedup": self.speedup,
            "speedup_ci": [self.ci_low, self.ci_high] if self.ci_low is not None else None,
            "samples_per_s": self.samples_per_s,
            "baseline_samples_per_s": self.baseline_samples_per_s,
            "accuracy": self.accuracy,
            "baseline_accuracy": self.baseline_accuracy,
            "accuracy_drop_points": self.accuracy_drop_points,
            "time_to_accuracy_s": self.time_to_accuracy_s,
            "baseline_time_to_accuracy_s": self.baseline_time_to_accuracy_s,
            "steps_to_accuracy": list(self.steps_to_accuracy) if self.steps_to_accuracy else None,
            "changes_numerics": c.changes_numerics,
            "seconds": round(self.seconds, 2),
        }


def decide(outcome: Outcome, max_accuracy_drop: float) -> Outcome:
    """Set ``outcome.status`` and ``reason`` from its measurements (see the module's rules)."""
    if outcome.status in (FAILED, SKIPPED, REJECTED) and outcome.speedup is None:
        return outcome  # skipped, failed, or rejected while measuring (never reached the accuracy)
    speed, low, high = outcome.speedup, outcome.ci_low, outcome.ci_high
    if speed is None or low is None or high is None or math.isnan(low) or math.isnan(high):
        outcome.status, outcome.reason = REJECTED, "too few rounds for a confidence interval"
        return outcome
    interval = f"{speed:.2f}x (95% CI {low:.2f}-{high:.2f})"
    if high < 1.0:
        outcome.status, outcome.reason = REJECTED, f"slower than the baseline: {interval}"
    elif low <= 1.0:
        outcome.status, outcome.reason = REJECTED, f"no gain beyond the noise: {interval}"
    elif outcome.candidate.changes_numerics and outcome.accuracy_drop_points is None:
        outcome.status, outcome.reason = REJECTED, f"{interval}, but accuracy could not be checked"
    elif outcome.candidate.changes_numerics and outcome.accuracy_drop_points > max_accuracy_drop:  # type: ignore[operator]
        outcome.status = REJECTED
        if outcome.score_mode == "min":  # a loss: percent of the baseline's
            outcome.reason = (
                f"{interval}, but the held-out metric is {outcome.accuracy_drop_points:.1f}% worse "
                f"(tolerance {max_accuracy_drop:g}%)"
            )
        else:
            outcome.reason = (
                f"{interval}, but held-out accuracy drops {outcome.accuracy_drop_points:.1f} points "
                f"(tolerance {max_accuracy_drop:g})"
            )
    else:
        outcome.status, outcome.reason = ACCEPTED, f"faster: {interval}"
    return outcome


def pick(outcomes: Iterable[Outcome]) -> dict[tuple[str, str], Outcome]:
    """Per (mode, axis), the accepted outcome with the largest median speed-up."""
    best: dict[tuple[str, str], Outcome] = {}
    for outcome in outcomes:
        if outcome.status != ACCEPTED or outcome.speedup is None:
            continue
        key = (outcome.candidate.mode, outcome.candidate.axis)
        if key not in best or outcome.speedup > (best[key].speedup or 0):
            best[key] = outcome
    return best


class TuneInterrupted(KeyboardInterrupt):
    """Ctrl-C during the measurements: ``outcomes`` are those finished; the tuner adds the
    ``result`` they support, for the caller to write."""

    def __init__(self, outcomes: list[Outcome]) -> None:
        super().__init__()
        self.outcomes = outcomes
        self.result: Any = None


class Budget:
    """Wall-clock budget; ``fits`` says whether a candidate's estimated cost still fits.

    ``reserve_s`` is kept back for the final side-by-side measurement of the tuned settings.
    """

    def __init__(
        self, seconds: float, reserve_s: float = 0.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if seconds <= 0:
            raise ValueError(f"tune.budget_s must be > 0, got {seconds}")
        self.seconds = seconds
        self.reserve_s = min(reserve_s, seconds / 2)
        self._clock = clock
        self._start = clock()

    @property
    def elapsed(self) -> float:
        return self._clock() - self._start

    @property
    def remaining(self) -> float:
        return self.seconds - self.elapsed

    def fits(self, cost_s: float) -> bool:
        return self.elapsed + cost_s <= self.seconds - self.reserve_s


def ordered(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Largest expected gain per second of measuring first (ties: cheaper first)."""
    return sorted(candidates, key=lambda c: (-(c.expected_gain - 1.0) / max(c.cost_s, 0.1), c.cost_s))


def run_within_budget(
    candidates: Iterable[Candidate],
    measure: Callable[[Candidate], Outcome],
    budget: Budget,
    *,
    max_accuracy_drop: float,
    on_done: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Measure candidates in :func:`ordered` order while they fit the budget; decide each one."""
    outcomes = []
    observed: dict[tuple[str, str], float] = {}  # what measuring an axis really cost, per candidate
    # the final side-by-side run of each mode's chosen settings costs about its dearest part again
    final_cost: dict[str, float] = {}
    for candidate in ordered(candidates):
        cost = max(candidate.cost_s, observed.get((candidate.mode, candidate.axis), 0.0))
        finals = sum(final_cost.values()) - final_cost.get(candidate.mode, 0.0)
        finals += max(final_cost.get(candidate.mode, 0.0), cost)
        if not budget.fits(cost + finals):
            outcome = Outcome(
                candidate,
                SKIPPED,
                f"out of budget: needs about {cost:.0f} s (and {finals:.0f} s for the final comparison), "
                f"{max(0.0, budget.remaining - budget.reserve_s):.0f} s left",
            )
        else:
            started = budget.elapsed
            try:
                outcome = measure(candidate)
            except BaseException as error:
                if not isinstance(error, Exception):  # Ctrl-C: keep what was measured
                    if is_interrupt(error):
                        outcomes.append(Outcome(candidate, SKIPPED, "interrupted (Ctrl-C) while measuring"))
                        raise TuneInterrupted(outcomes) from None
                    raise
                # one candidate failing must not lose the others
                outcome = Outcome(candidate, FAILED, first_line(error, typed=True))
            outcome.seconds = budget.elapsed - started
            observed[(candidate.mode, candidate.axis)] = outcome.seconds
            outcome = decide(outcome, max_accuracy_drop)
            if outcome.status == ACCEPTED:
                final_cost[candidate.mode] = max(final_cost.get(candidate.mode, 0.0), outcome.seconds)
        outcomes.append(outcome)
        if on_done is not None:
            on_done(outcome)
    return outcomes

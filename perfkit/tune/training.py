"""Training candidates, measured: the user's ``training_step`` plus the optimizer step on real
batches in a Trainer, against the default side by side (interleaved rounds, paired ratios); a setting
that changes numerics is judged by its time to the baseline's held-out metric."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

from perfkit.measure import Timing, median_confidence_interval
from perfkit.tune import runs
from perfkit.tune.candidates import Candidate
from perfkit.tune.selection import ACCEPTED, REJECTED, SKIPPED, Outcome
from perfkit.tune.workbench import Workbench, optimizations


class TrainingMeasurement:
    def __init__(self, bench: Workbench) -> None:
        self.bench = bench

    def measure(self, candidate: Candidate) -> Outcome:
        bench = self.bench
        if candidate.changes_numerics and bench.no_score:
            return Outcome(candidate, SKIPPED, f"no held-out metric to check it against: {bench.no_score}")
        base, run = self._variant({}), self._variant(candidate.settings)
        base(), run()  # warm-up rounds (compilation, allocator), not counted
        seconds = runs.interleaved_fits({"baseline": base, "candidate": run}, bench.settings.rounds)
        size = int(candidate.settings.get("data.batch_size", bench.batch_size))
        baseline, timing = Timing("baseline", seconds["baseline"]), Timing("candidate", seconds["candidate"])
        outcome = paired(candidate, baseline, bench.batch_size, timing, size)
        if candidate.changes_numerics:
            self._time_to_accuracy(outcome, baseline, timing)
        return outcome

    def num_workers(self) -> Outcome:
        """The loader autotune's choice of DataLoader workers, as an outcome (measured by the datamodule)."""
        datamodule = self.bench.datamodule
        candidate = Candidate("train", "num_workers", "auto", {})
        choose = getattr(datamodule, "workers_per_rank", None)
        if not callable(choose) or not hasattr(datamodule, "num_workers"):
            return Outcome(candidate, SKIPPED, "the datamodule is not a perfkit ClassificationDataModule")
        resident = getattr(datamodule, "resident", None)
        if callable(resident) and resident().enabled:
            return Outcome(candidate, SKIPPED, "batches come from device-resident data: no loader workers")
        previous = datamodule.num_workers
        datamodule.num_workers, datamodule._resolved_workers = "auto", None
        try:
            workers = int(choose())
        finally:
            datamodule.num_workers = previous
            datamodule._resolved_workers = None
        rates = getattr(datamodule.worker_choice, "samples_per_s", {}) or {}
        candidate.name, candidate.settings = str(workers), {"data.num_workers": workers}
        base = rates.get(previous if isinstance(previous, int) else 0)
        outcome = Outcome(
            candidate, ACCEPTED, "", samples_per_s=rates.get(workers), baseline_samples_per_s=base
        )
        if base and rates.get(workers):
            outcome.speedup = rates[workers] / base
        if workers == previous:
            outcome.status = REJECTED
            outcome.reason = f"the configured {previous} worker(s) already load fastest (loader autotune)"
            return outcome
        outcome.reason = (
            f"the loader autotune measured {workers} worker(s) fastest"
            + (f" ({outcome.speedup:.2f}x the configured {previous})" if outcome.speedup else "")
            + "; loading overlaps the step, so this gains only where loading is the bottleneck"
        )
        return outcome

    def _variant(self, keys: dict[str, Any]) -> Callable[[], list[float]]:
        """One timing run of ``keys``: a Trainer.fit over warm-up + timed batches of the module (the
        same object and callbacks every round, so a compiled graph is reused); returns the step times."""
        bench = self.bench
        module = bench.fresh_module()
        size = int(keys.get("data.batch_size", bench.batch_size))
        batches = [bench.batch(size)] * (bench.settings.warmup + 4)
        applied = optimizations(keys).callbacks(module)

        def run() -> list[float]:
            timer = runs.StepTimes(bench.device)
            limit = 1 if bench.val_batches else 0  # an epoch-end scheduler may read a validation metric
            t = runs.trainer(
                bench.device, keys.get("precision"), [timer, *applied], max_epochs=1, limit_val_batches=limit
            )
            runs.fit(module, batches, bench.val_batches[:1] or None, t)
            return timer.seconds[bench.settings.warmup :] or timer.seconds

        return run

    def _time_to_accuracy(self, outcome: Outcome, base: Timing, timing: Timing) -> None:
        """Judge a setting that changes the numerics by the time it takes to reach the baseline's
        monitored metric from the same initial weights and samples (MLPerf Training's rule), not by
        samples/s: a larger batch takes fewer, and different, optimizer steps."""
        bench, score = self.bench, self.bench.score
        keys = outcome.candidate.settings
        base_curve = bench.curve({}, bench.settings.accuracy_steps, None)
        if not base_curve:
            raise ValueError(f"the module logged no {score.metric} in validation (set monitor=...)")
        baseline = base_curve[-1][1]
        target = score.target(baseline, bench.settings.max_accuracy_drop)
        base_steps = next(step for step, value in base_curve if score.better_or_equal(value, target))
        size = int(keys.get("data.batch_size", bench.batch_size))
        # up to twice the baseline's samples: a larger batch may need more epochs, not unlimited ones
        cap = max(1, math.ceil(2 * bench.settings.accuracy_steps * bench.batch_size / size))
        curve = bench.curve(keys, cap, target)
        reached = next((step for step, value in curve if score.better_or_equal(value, target)), None)
        best = max if score.mode == "max" else min
        outcome.baseline_accuracy = baseline
        outcome.accuracy = best((value for _, value in curve), default=None)
        outcome.score_mode = score.mode
        outcome.baseline_time_to_accuracy_s = statistics.median(base.seconds) * base_steps
        if reached is None:
            outcome.status = REJECTED
            outcome.speedup = outcome.ci_low = outcome.ci_high = None
            outcome.reason = (
                f"never reached the baseline's {score.metric} {target:.4g} within {cap} steps "
                f"(twice its samples; best {outcome.accuracy})"
            )
            return
        outcome.accuracy = next(value for step, value in curve if step == reached)
        outcome.time_to_accuracy_s = statistics.median(timing.seconds) * reached
        ratios = [(b * base_steps) / (c * reached) for b, c in zip(base.seconds, timing.seconds, strict=True)]
        outcome.speedup = statistics.median(ratios)
        outcome.ci_low, outcome.ci_high = median_confidence_interval(ratios)
        outcome.steps_to_accuracy = (base_steps, reached)


def paired(candidate: Candidate, base: Timing, base_size: int, timing: Timing, size: int) -> Outcome:
    """Per-round ratios of time per sample, baseline over candidate, with a 95% CI of their median."""
    ratios = [(b / base_size) / (c / size) for b, c in zip(base.seconds, timing.seconds, strict=True)]
    low, high = median_confidence_interval(ratios)
    return Outcome(
        candidate,
        status="measured",
        speedup=statistics.median(ratios),
        ci_low=low,
        ci_high=high,
        samples_per_s=size / statistics.median(timing.seconds),
        baseline_samples_per_s=base_size / statistics.median(base.seconds),
    )

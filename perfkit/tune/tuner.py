"""``perfkit.tune``: measure candidate settings on the user's model, data and hardware; keep what is faster.

The coordinator: :mod:`perfkit.tune.candidates` proposes, :mod:`perfkit.tune.training` and
:mod:`perfkit.tune.inference` measure (side by side with the default, on real batches, numerics
judged on held-out data), :mod:`perfkit.tune.selection` decides, and the chosen settings of a mode
are measured together against the defaults once more.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from perfkit.schemas import Tune as TuneSettings
from perfkit.system import environment
from perfkit.tune.candidates import Candidate, changes_numerics, larger_batch, propose
from perfkit.tune.inference import InferenceMeasurement
from perfkit.tune.report import TuneResult
from perfkit.tune.selection import (
    ACCEPTED,
    FAILED,
    Budget,
    Outcome,
    TuneInterrupted,
    decide,
    pick,
    run_within_budget,
)
from perfkit.tune.training import TrainingMeasurement
from perfkit.tune.workbench import Workbench

__all__ = ["TuneResult", "TuneSettings", "Tuner"]

log = logging.getLogger(__name__)


class Tuner:
    """Measures the candidates for ``module`` (a LightningModule) on ``datamodule``."""

    def __init__(
        self,
        module: Any,
        datamodule: Any,
        settings: TuneSettings,
        progress: Callable[[Outcome], None] | None = None,
        *,
        monitor: str | None = None,
        monitor_mode: str = "max",
    ) -> None:
        self.bench = Workbench(module, datamodule, settings, monitor=monitor, monitor_mode=monitor_mode)
        self.settings, self.device, self.module = settings, self.bench.device, module
        self.datamodule, self.batch_size = datamodule, self.bench.batch_size
        self.progress = progress
        self.budget = Budget(settings.budget_s, reserve_s=0.05 * settings.budget_s)
        self.training = TrainingMeasurement(self.bench)
        self.inference = InferenceMeasurement(self.bench)

    def candidates(self) -> list[Candidate]:
        return propose(self.module, self.datamodule, self.settings, self.device, self.batch_size)

    def _larger_batch(self, factor: int) -> tuple[dict[str, Any], str]:
        return larger_batch(self.module, self.settings, self.batch_size, factor)

    def run(self) -> TuneResult:
        outcomes: list[Outcome] = []
        if "train" in self.settings.modes:
            outcomes.append(self.training.num_workers())
        try:
            outcomes += run_within_budget(
                self.candidates(),
                self._measure,
                self.budget,
                max_accuracy_drop=self.settings.max_accuracy_drop,
                on_done=self.progress,
            )
        except TuneInterrupted as stop:  # what was measured, without the final side-by-side run
            stop.result = self._result(outcomes + stop.outcomes, self._chosen(outcomes + stop.outcomes), {})
            stop.result.interrupted = True
            raise
        chosen = self._chosen(outcomes)
        if "train" in chosen:
            worker_outcome = next((o for o in outcomes if o.candidate.axis == "num_workers"), None)
            if worker_outcome is not None and worker_outcome.status == ACCEPTED:
                chosen["train"].update(worker_outcome.candidate.settings)
        final: dict[str, Outcome] = {}
        for mode in chosen:
            final_outcome = self._together(mode, chosen, outcomes)
            if final_outcome is not None:
                final[mode] = final_outcome
        return self._result(outcomes, chosen, final)

    def _together(
        self, mode: str, chosen: dict[str, dict[str, Any]], outcomes: list[Outcome]
    ) -> Outcome | None:
        """The chosen settings of ``mode`` measured together; the best single one where together is
        not faster (``chosen`` is updated to it)."""
        keys = chosen[mode]
        step_keys = {k: v for k, v in keys.items() if k != "data.num_workers"}
        picked = [o for (m, _axis), o in pick(outcomes).items() if m == mode]
        if len(picked) == 1:  # one setting: its own side-by-side measurement is the answer
            return picked[0]
        if not step_keys:
            return None
        together = self._final(mode, step_keys)
        outcomes.append(together)
        if together.status == ACCEPTED:
            return together
        single = max(picked, key=lambda o: o.speedup or 0.0)  # faster alone, not together
        log.warning(
            "tuned %s settings together: %s; keeping the fastest single setting %s",
            mode,
            together.reason,
            single.candidate.settings,
        )
        workers = {k: v for k, v in keys.items() if k == "data.num_workers"}
        chosen[mode] = {**single.candidate.settings, **workers}
        return single

    def _chosen(self, outcomes: list[Outcome]) -> dict[str, dict[str, Any]]:
        chosen: dict[str, dict[str, Any]] = {mode: {} for mode in self.settings.modes}
        for (mode, _axis), outcome in pick(outcomes).items():
            chosen[mode].update(outcome.candidate.settings)
        return chosen

    def _result(
        self, outcomes: list[Outcome], chosen: dict[str, dict[str, Any]], final: dict[str, Outcome]
    ) -> TuneResult:
        return TuneResult(
            outcomes=outcomes,
            chosen=chosen,
            final=final,
            elapsed_s=self.budget.elapsed,
            budget_s=self.settings.budget_s,
            device=str(self.device),
            environment=environment(),
            max_accuracy_drop=self.settings.max_accuracy_drop,
        )

    def _final(self, mode: str, keys: dict[str, Any]) -> Outcome:
        """The chosen settings together against the defaults, side by side."""
        name = "+".join(f"{k}={v}" for k, v in keys.items())
        candidate = Candidate(mode, "together", name, keys, changes_numerics=changes_numerics(mode, keys))
        try:
            outcome = self._measure(candidate)
        except Exception as error:
            return Outcome(candidate, FAILED, f"{type(error).__name__}: {error}")
        return decide(outcome, self.settings.max_accuracy_drop)

    def _measure(self, candidate: Candidate) -> Outcome:
        if candidate.mode == "train":
            return self.training.measure(candidate)
        return self.inference.measure(candidate)

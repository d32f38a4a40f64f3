"""TorchProfiler: the Lightning callback that profiles a few training steps of every rank on a schedule."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch

from perfkit.measure import quiet_profiler_logs
from perfkit.profiling.breakdown import _STEP, VALIDATION_LABEL, Span, StepBreakdown, hint, step_breakdown
from perfkit.profiling.report import ProfileReport
from perfkit.profiling.trace import OperatorTime, spans_of, top_operators

log = logging.getLogger(__name__)

_SCHEDULE_KEYS = ("skip_first", "wait", "warmup", "active", "repeat")


@dataclass
class _RankProfile:
    rank: int
    breakdown: StepBreakdown | None
    operators: dict[str, list[OperatorTime]] = field(default_factory=dict)
    trace_files: list[str] = field(default_factory=list)


class TorchProfiler(L.Callback):
    """Profile a few training steps of every rank with ``torch.profiler`` on a schedule.

    Args:
        dirpath: where the traces go; put it under the TensorBoard logdir to see them in the plugin.
        report_dir: where ``profile.json`` and ``profile.md`` go (default: the trainer's root dir).
        schedule: ``skip_first`` steps are ignored, then ``repeat`` cycles of ``wait``, ``warmup`` and
            ``active`` steps (only active steps are recorded). Defaults: 5, 1, 1, 3 and 1.
        record_shapes, profile_memory, with_stack, with_flops: passed to ``torch.profiler.profile``;
            the plugin's Memory view needs ``profile_memory``.
        gzip: write ``.pt.trace.json.gz`` (TensorBoard and Perfetto read it; several times smaller).
        max_trace_mb: stop recording further cycles once the traces reach this size.
        top_k: operators listed in the report.
        stop_when_done: end training once the last cycle is recorded (``python -m perfkit.profile``).
    """

    def __init__(
        self,
        dirpath: str,
        report_dir: str | None = None,
        schedule: Mapping[str, int] | None = None,
        record_shapes: bool = True,
        profile_memory: bool = True,
        with_stack: bool = False,
        with_flops: bool = False,
        gzip: bool = False,
        max_trace_mb: float = 50.0,
        top_k: int = 10,
        stop_when_done: bool = False,
    ) -> None:
        settings = {"skip_first": 5, "wait": 1, "warmup": 1, "active": 3, "repeat": 1, **(schedule or {})}
        unknown = sorted(set(settings) - set(_SCHEDULE_KEYS))
        if unknown:
            raise ValueError(
                f"profiler.schedule has no key {unknown[0]!r}; allowed: {', '.join(_SCHEDULE_KEYS)}"
            )
        bad = [k for k, v in settings.items() if not isinstance(v, int) or isinstance(v, bool) or v < 0]
        if bad or settings["active"] < 1 or settings["repeat"] < 1:
            raise ValueError(
                f"profiler.schedule={settings} is not valid: use integers >= 0, with active and repeat >= 1"
            )
        if max_trace_mb <= 0 or top_k < 1:
            raise ValueError("profiler.max_trace_mb must be > 0 and profiler.top_k >= 1")
        self.dirpath = Path(dirpath)
        self.report_dir = Path(report_dir) if report_dir else None
        self.schedule = settings
        self.options = {
            "record_shapes": record_shapes,
            "profile_memory": profile_memory,
            "with_stack": with_stack,
            "with_flops": with_flops,
        }
        self.gzip = gzip
        self.max_trace_bytes = int(max_trace_mb * 1e6)
        self.top_k = top_k
        self.stop_when_done = stop_when_done
        self._profiler: Any = None
        self._spans: list[Span] = []
        self._recorded: list[Any] = []  # each cycle's torch.autograd.profiler.profile, analysed at the end
        self._operators: dict[str, list[OperatorTime]] = {}
        self._cycles = 0
        self._validation: Any = None
        self._trainer: Any = None
        self._stopped_for_size = False
        self._pending_warnings: list[str] = []
        self.result: dict[str, Any] | None = None

    @property
    def steps_needed(self) -> int:
        """Training steps until the last cycle is recorded."""
        s = self.schedule
        return s["skip_first"] + (s["wait"] + s["warmup"] + s["active"]) * s["repeat"]

    def _device(self, trainer: L.Trainer) -> str:
        return str(trainer.strategy.root_device.type)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from torch.profiler import ProfilerActivity, profile, schedule

        self._trainer = trainer
        activities = [ProfilerActivity.CPU]
        if self._device(trainer) == "cuda":
            activities.append(ProfilerActivity.CUDA)
        s = self.schedule
        self.dirpath.mkdir(parents=True, exist_ok=True)
        self._profiler = profile(
            activities=activities,
            schedule=schedule(
                skip_first=s["skip_first"],
                wait=s["wait"],
                warmup=s["warmup"],
                active=s["active"],
                repeat=s["repeat"],
            ),
            on_trace_ready=self._trace_ready,
            record_shapes=self.options["record_shapes"],
            profile_memory=self.options["profile_memory"],
            with_stack=self.options["with_stack"],
            with_flops=self.options["with_flops"],
        )
        with quiet_profiler_logs():
            self._profiler.start()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # one profiler step per batch, from this batch's start to the next one's: the step, then fetching
        # the next batch (Lightning prefetches one)
        if self._profiler is not None:
            with quiet_profiler_logs():  # kineto's C++ log lines when a cycle starts and ends
                self._profiler.step()
            for message in self._pending_warnings:
                log.warning(message)
            self._pending_warnings.clear()

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._profiler is not None and trainer.state.fn == "fit":
            self._validation = torch.autograd.profiler.record_function(VALIDATION_LABEL)
            self._validation.__enter__()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._validation is not None:
            self._validation.__exit__(None, None, None)
            self._validation = None

    def _trace_ready(self, profiler: Any) -> None:
        from torch.profiler import tensorboard_trace_handler

        if self._trace_bytes() >= self.max_trace_bytes:
            if not self._stopped_for_size:  # logged after the step: stderr is silenced during it
                self._pending_warnings.append(
                    f"profiler: traces in {self.dirpath} reached {self._trace_bytes() / 1e6:.0f} MB: not "
                    "writing more (raise profiler.max_trace_mb, or lower profiler.schedule.active/repeat)"
                )
            self._stopped_for_size = True
        else:
            worker = f"rank{self._trainer.global_rank if self._trainer else 0}"
            tensorboard_trace_handler(str(self.dirpath), worker_name=worker, use_gzip=self.gzip)(profiler)
        # parsing the events costs far more than writing the trace (~0.5 s for a small CNN): keep this
        # cycle's results and analyse them after training, outside the steps users time
        self._recorded.append(profiler.profiler)
        self._cycles += 1
        if self.stop_when_done and self._cycles >= self.schedule["repeat"] and self._trainer is not None:
            self._trainer.should_stop = True

    def _trace_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.dirpath.glob("*.pt.trace.json*") if p.is_file())

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._profiler is None:
            return

        self.on_validation_epoch_end(trainer, pl_module)
        with quiet_profiler_logs():
            self._profiler.stop()  # flushes a cycle cut short by the end of training
        self._profiler = None
        for recorded in self._recorded:
            events = recorded.function_events
            self._spans += spans_of(events)
            steps = sum(1 for e in events if _STEP.match(e.name))
            for kind, rows in top_operators(events, steps, self.top_k * 3).items():
                self._operators.setdefault(kind, []).extend(rows)
        self._recorded = []
        for message in self._pending_warnings:
            log.warning(message)
        self._pending_warnings.clear()
        mine = _RankProfile(
            rank=trainer.global_rank,
            breakdown=step_breakdown(self._spans, device=self._device(trainer)),
            operators=_merge_operators(self._operators, self._cycles, self.top_k),
            trace_files=sorted(
                p.name for p in self.dirpath.glob(f"rank{trainer.global_rank}.*.pt.trace.json*")
            ),
        )
        self._spans, self._operators = [], {}
        everyone = _gather(mine)
        if trainer.is_global_zero:
            self.result = self._report(everyone, trainer)

    def _report(self, ranks: list[_RankProfile], trainer: L.Trainer) -> dict[str, Any]:
        measured = [r.breakdown for r in ranks if r.breakdown is not None]
        if not measured:
            log.warning(
                "profiler: training ended after %d steps, before a profiled step completed (the schedule "
                "needs %d): train longer or lower profiler.schedule.skip_first/wait/warmup",
                trainer.global_step,
                self.steps_needed,
            )
        mean = _mean_breakdown(measured) if measured else None
        workers = _num_workers(trainer)
        result: dict[str, Any] = {
            "schedule": self.schedule,
            "options": {**self.options, "gzip": self.gzip},
            "trace_dir": str(self.dirpath),
            "trace_mb": round(self._trace_bytes() / 1e6, 3),
            "trace_files": [f for r in ranks for f in r.trace_files],
            "world_size": len(ranks),
            "breakdown": asdict(mean) if mean else None,
            "hint": hint(mean, num_workers=workers) if mean else None,
            "per_rank": [{"rank": r.rank, **(asdict(r.breakdown) if r.breakdown else {})} for r in ranks],
            "top_operators": {k: [asdict(o) for o in v] for k, v in ranks[0].operators.items()},
        }
        report_dir = self.report_dir or Path(trainer.default_root_dir)
        report_dir.mkdir(parents=True, exist_ok=True)
        ProfileReport(result).save(report_dir)
        return result


def _num_workers(trainer: L.Trainer) -> int | None:
    datamodule = getattr(trainer, "datamodule", None)
    workers = getattr(datamodule, "workers_per_rank", None)
    if callable(workers):
        return int(workers())
    value = getattr(datamodule, "num_workers", None)
    return value if isinstance(value, int) else None


def _gather(mine: _RankProfile) -> list[_RankProfile]:
    """Every rank's profile on every rank (just this one outside a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [mine]
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return sorted(everyone, key=lambda r: r.rank)


def _merge_operators(
    rows: dict[str, list[OperatorTime]], cycles: int, limit: int
) -> dict[str, list[OperatorTime]]:
    """Average each operator's per-step times over the recorded cycles; keep the top ``limit``."""
    merged: dict[str, list[OperatorTime]] = {}
    for kind, entries in rows.items():
        by_name: dict[str, OperatorTime] = {}
        for e in entries:
            total = by_name.setdefault(e.name, OperatorTime(e.name, 0.0, 0.0, 0.0, 0.0))
            total.calls_per_step += e.calls_per_step / max(cycles, 1)
            total.self_cpu_ms += e.self_cpu_ms / max(cycles, 1)
            total.cpu_total_ms += e.cpu_total_ms / max(cycles, 1)
            total.self_device_ms += e.self_device_ms / max(cycles, 1)
        key = (lambda o: -o.self_device_ms) if kind == "device" else (lambda o: -o.self_cpu_ms)
        merged[kind] = sorted(by_name.values(), key=key)[:limit]
    return merged


def _mean_breakdown(measured: list[StepBreakdown]) -> StepBreakdown:
    """The ranks' average breakdown (their steps ran together, so a plain mean)."""
    count = len(measured)

    def mean(name: str) -> float:
        return sum(getattr(b, name) or 0.0 for b in measured) / count

    accelerator = {
        name: mean(name) if measured[0].on_accelerator else None
        for name in ("kernel", "memcpy", "memset", "runtime", "cpu_exec", "device_busy")
    }
    return StepBreakdown(
        steps=measured[0].steps,
        step_ms=mean("step_ms"),
        data=mean("data"),
        compute=mean("compute"),
        communication=mean("communication"),
        other=mean("other"),
        communication_total=mean("communication_total"),
        device=measured[0].device,
        **accelerator,
    )

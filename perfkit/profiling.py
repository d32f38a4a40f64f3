"""Profile training steps with ``torch.profiler``: traces for TensorBoard and Perfetto, and a step breakdown.

:class:`TorchProfiler` is a Lightning callback (``profiler=pytorch`` in ``perfkit.train``; any
``Trainer(callbacks=[...])`` in the user's own code). Each rank writes its traces with
``tensorboard_trace_handler`` as ``rank<N>.<id>.pt.trace.json[.gz]``, which the TensorBoard profiler
plugin (``tensorboard --logdir <run dir>``) and Perfetto (ui.perfetto.dev) both open. At the end, rank 0
writes ``profile.json`` and ``profile.md``: the top operators by self time and where each step's wall
time went (waiting for data, compute, communication not hidden behind compute, other), with a hint when
a bottleneck is obvious.

The breakdown is computed from the profiled events as time intervals, so nested and concurrent events
are never counted twice: see :func:`step_breakdown`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch

from perfkit.run import write_json

log = logging.getLogger(__name__)

# a record_function label around validation inside the profiled window, which the breakdown leaves out
VALIDATION_LABEL = "perfkit: validation (not part of the step)"
_STEP = re.compile(r"^ProfilerStep(#\d+|\*)$")  # torch renames the events "ProfilerStep*"
_DATA = re.compile(r"^enumerate\(DataLoader\)#")
# collectives: the CPU-side record of gloo/NCCL/MPI/UCC work, c10d ops, and NCCL kernels on the GPU
_COMMUNICATION = re.compile(r"^(gloo|nccl|mpi|ucc):|^c10d::|^nccl|ncclDevKernel|ncclKernel", re.IGNORECASE)
# CPU events that only wrap others (the whole closure, DDP's forward): their children are the work
_WRAPPERS = re.compile(
    r"^(ProfilerStep#|Optimizer\.(step|zero_grad)#|DistributedDataParallel\.forward|enumerate\(DataLoader\)"
    r"|PyTorch Profiler|\[|## |" + re.escape(VALIDATION_LABEL) + ")"
)
_SCHEDULE_KEYS = ("skip_first", "wait", "warmup", "active", "repeat")
# hints fire above these fractions of step time
_DATA_HINT, _COMMUNICATION_HINT, _OVERHEAD_HINT = 0.2, 0.2, 0.3
_GPU_IDLE_HINT = 0.5  # below this GPU utilisation a step is launch- or CPU-bound


# -- interval arithmetic on (start, end) pairs in microseconds ---------------------------------------


Intervals = list[tuple[float, float]]


def union(spans: Iterable[tuple[float, float]]) -> Intervals:
    """Sorted, disjoint intervals covering exactly the given ones."""
    merged: Intervals = []
    for start, end in sorted(s for s in spans if s[1] > s[0]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def intersect(a: Intervals, b: Intervals) -> Intervals:
    """Where both (disjoint, sorted) interval lists are covered."""
    result, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        start, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if start < end:
            result.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return result


def subtract(a: Intervals, b: Intervals) -> Intervals:
    """Where ``a`` is covered and ``b`` is not (both disjoint and sorted)."""
    result: Intervals = []
    j = 0
    for start, end in a:
        while j < len(b) and b[j][1] <= start:
            j += 1
        cursor, k = start, j
        while k < len(b) and b[k][0] < end:
            if b[k][0] > cursor:
                result.append((cursor, b[k][0]))
            cursor = max(cursor, b[k][1])
            k += 1
        if cursor < end:
            result.append((cursor, end))
    return result


def length(intervals: Intervals) -> float:
    return sum(end - start for start, end in intervals)


# -- the breakdown ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    """One profiled event: its name, start and end (µs), whether it ran on an accelerator, whether it
    is a ``record_function`` label (which wraps work rather than doing it), and for CUDA API calls and
    device work the correlation id that ties a launch to what it launched (0: none)."""

    name: str
    start_us: float
    end_us: float
    on_device: bool = False
    annotation: bool = False
    correlation: int = 0


@dataclass
class StepBreakdown:
    """Where the profiled steps' wall time went; the fractions of :meth:`fractions` add up to 1.

    On the CPU: data, compute (operators), communication, other. On an accelerator, the categories of
    the TensorBoard profiler plugin's overview, each instant counted once in this order of priority:
    kernel, memcpy, memset, communication, runtime (CUDA API calls: launches, copies, syncs), data,
    cpu_exec (operators on the CPU while the GPU has nothing to do), other; ``device_busy`` is the
    GPU utilisation (kernels, copies or memsets running) and ``compute`` equals ``kernel``.
    """

    steps: int
    step_ms: float  # mean wall time per step
    data: float  # waiting for the next batch (while the accelerator, if any, had nothing to do)
    compute: float  # operators on the CPU, or kernels on the accelerator
    communication: float  # collectives not hidden behind compute (the part that costs step time)
    other: float  # Python, framework and launch overhead; an idle accelerator
    communication_total: float = 0.0  # all collective time, including what overlapped compute
    device: str = "cpu"
    kernel: float | None = None
    memcpy: float | None = None
    memset: float | None = None
    runtime: float | None = None
    cpu_exec: float | None = None
    device_busy: float | None = None

    @property
    def on_accelerator(self) -> bool:
        return self.device_busy is not None

    def fractions(self) -> dict[str, float]:
        if self.on_accelerator:
            names = ("kernel", "memcpy", "memset", "communication", "runtime", "data", "cpu_exec", "other")
            return {name: float(getattr(self, name) or 0.0) for name in names}
        return {
            "data": self.data,
            "compute": self.compute,
            "communication": self.communication,
            "other": self.other,
        }


def step_breakdown(spans: Sequence[Span], *, device: str = "cpu") -> StepBreakdown | None:
    """Attribute each instant of the profiled steps to one cause; None without a complete step.

    Steps are the ``ProfilerStep#N`` intervals, minus validation run inside them. On CPU, waiting for
    data is the time in the DataLoader's ``__next__``; compute is the time covered by any operator
    (nested ones once); communication is collective time covered by neither. On an accelerator see
    :func:`_accelerator_breakdown`. The rest is "other".
    """
    steps = [s for s in spans if not s.on_device and _STEP.match(s.name)]
    if not steps:
        return None
    bounds = [(s.start_us, s.end_us) for s in steps]
    if device != "cpu":
        bounds = device_timed_steps(bounds, spans)
    window = subtract(
        union(bounds),
        union((s.start_us, s.end_us) for s in spans if s.name == VALIDATION_LABEL),
    )
    total = length(window)
    if total <= 0:
        return None

    def covered(select: Any) -> Intervals:
        return intersect(union((s.start_us, s.end_us) for s in spans if select(s)), window)

    if device != "cpu":
        return _accelerator_breakdown(spans, covered, total, len(steps), device)
    data = covered(lambda s: not s.on_device and _DATA.match(s.name))
    communication = covered(lambda s: bool(_COMMUNICATION.search(s.name)))
    compute = subtract(
        covered(lambda s: not s.on_device and _is_cpu_operator(s)),
        data,  # collating a batch runs operators too: that is data loading
    )
    exposed_communication = subtract(subtract(communication, compute), data)
    busy = union(data + compute + exposed_communication)
    return StepBreakdown(
        steps=len(steps),
        step_ms=total / len(steps) / 1e3,
        data=length(data) / total,
        compute=length(compute) / total,
        communication=length(exposed_communication) / total,
        other=max(0.0, (total - length(busy)) / total),
        communication_total=length(communication) / total,
        device=device,
    )


# CUDA/HIP runtime and driver API calls on the CPU: kernel launches, copies, synchronisations
_RUNTIME = re.compile(r"^(cuda|cu|hip)[A-Z]")


def device_timed_steps(steps: Sequence[tuple[float, float]], spans: Sequence[Span]) -> Intervals:
    """Steps as the GPU sees them, as the TensorBoard plugin times them: a step ends when the later of
    its CPU side and the last device work it launched ends, and starts when the previous step ends.

    The CPU runs ahead of a busy GPU, so a CPU-side step can end long before its kernels do. Device work
    is tied to the step whose CPU side launched it by correlation id. Without any, steps stay as given.
    """
    from bisect import bisect_right

    steps = sorted(steps)
    starts = [start for start, _ in steps]
    launched: dict[int, int] = {}  # correlation id -> the step whose CPU side made that call
    for span in spans:
        if span.correlation and not span.on_device and _RUNTIME.match(span.name):
            i = bisect_right(starts, span.start_us) - 1  # the last step starting at or before the call
            if i >= 0 and span.end_us <= steps[i][1]:
                launched[span.correlation] = i
    device_end: dict[int, float] = {}
    first_device_start = float("inf")
    for span in spans:
        if span.on_device and not span.annotation and span.correlation in launched:
            i = launched[span.correlation]
            device_end[i] = max(device_end.get(i, span.end_us), span.end_us)
            if i == 0:
                first_device_start = min(first_device_start, span.start_us)
    if not device_end:
        return list(steps)
    previous_end = steps[0][0]
    if 0 in device_end:  # work launched before the window, still running when it opened, delays step 0
        earlier = [
            s.end_us
            for s in spans
            if s.on_device
            and not s.annotation
            and s.correlation not in launched
            and s.end_us < first_device_start
        ]
        previous_end = max([previous_end, *earlier])
    timed: Intervals = []
    for i, (start, end) in enumerate(steps):
        start = max(previous_end, start)
        end = max(end, device_end.get(i, start))
        timed.append((start, end))
        previous_end = end
    return timed


def _is_cpu_operator(span: Span) -> bool:
    return (
        not span.annotation
        and not _WRAPPERS.match(span.name)
        and not _COMMUNICATION.search(span.name)
        and not _RUNTIME.match(span.name)
    )


def _accelerator_breakdown(
    spans: Sequence[Span], covered: Any, total: float, steps: int, device: str
) -> StepBreakdown:
    """The TensorBoard profiler plugin's step-time split: each instant goes to the first of kernel,
    memcpy, memset, communication, runtime, data, CPU execution that covers it, else to other.

    Annotation ranges (``record_function`` labels and their ``gpu_user_annotation`` shadows on the
    device timeline, e.g. ``Optimizer.step#AdamW.step``) wrap work and are never kernel time.
    """
    labels = {s.name for s in spans if s.annotation or _WRAPPERS.match(s.name)}

    def device_work(span: Span) -> bool:
        return span.on_device and not span.annotation and span.name not in labels

    kernel = covered(
        lambda s: device_work(s) and not _COPY.match(s.name) and not _COMMUNICATION.search(s.name)
    )
    memcpy = subtract(covered(lambda s: device_work(s) and s.name.lower().startswith("memcpy")), kernel)
    memset = subtract(
        covered(lambda s: device_work(s) and s.name.lower().startswith("memset")), union(kernel + memcpy)
    )
    busy = union(kernel + memcpy + memset)
    communication_all = covered(lambda s: bool(_COMMUNICATION.search(s.name)) and s.name not in labels)
    communication = subtract(communication_all, busy)
    taken = union(busy + communication)
    runtime = subtract(covered(lambda s: not s.on_device and bool(_RUNTIME.match(s.name))), taken)
    taken = union(taken + runtime)
    data = subtract(covered(lambda s: not s.on_device and _DATA.match(s.name)), taken)
    taken = union(taken + data)
    cpu_exec = subtract(covered(lambda s: not s.on_device and _is_cpu_operator(s)), taken)
    taken = union(taken + cpu_exec)
    share = {
        name: length(part) / total
        for name, part in (
            ("kernel", kernel),
            ("memcpy", memcpy),
            ("memset", memset),
            ("communication", communication),
            ("runtime", runtime),
            ("data", data),
            ("cpu_exec", cpu_exec),
        )
    }
    return StepBreakdown(
        steps=steps,
        step_ms=total / steps / 1e3,
        data=share["data"],
        compute=share["kernel"],
        communication=share["communication"],
        other=max(0.0, (total - length(taken)) / total),
        communication_total=length(communication_all) / total,
        device=device,
        kernel=share["kernel"],
        memcpy=share["memcpy"],
        memset=share["memset"],
        runtime=share["runtime"],
        cpu_exec=share["cpu_exec"],
        device_busy=length(busy) / total,
    )


_COPY = re.compile(r"^mem(cpy|set)", re.IGNORECASE)


def hint(breakdown: StepBreakdown, *, num_workers: int | None = None) -> str | None:
    """One line on the obvious bottleneck, or None when compute dominates as it should."""
    if breakdown.data > _DATA_HINT:
        now = f" (now {num_workers})" if num_workers is not None else ""
        return (
            f"waiting for data takes {breakdown.data:.0%} of each step: use more DataLoader workers{now}, "
            "e.g. data.num_workers=auto, or make __getitem__ cheaper"
        )
    if breakdown.communication > _COMMUNICATION_HINT:
        return (
            f"communication not hidden behind compute takes {breakdown.communication:.0%} of each step: "
            "sync less often (larger per-rank batch, trainer.accumulate_grad_batches) or use fewer, faster-linked ranks"
        )
    if breakdown.on_accelerator and (breakdown.device_busy or 0.0) < _GPU_IDLE_HINT:
        return (
            f"the GPU is busy only {breakdown.device_busy:.0%} of each step (kernels {breakdown.kernel:.0%}): "
            f"it waits for the CPU (CUDA API calls {breakdown.runtime:.0%}, CPU operators "
            f"{breakdown.cpu_exec:.0%}, other {breakdown.other:.0%}). The step is launch- or CPU-bound: a larger "
            "batch, device-resident data (data.device_resident=true), CUDA graphs (optimize.compile=true "
            "optimize.compile_mode=reduce-overhead) and fewer host syncs (.item(), printing tensors) help"
        )
    if breakdown.other > _OVERHEAD_HINT:
        where = "the accelerator is idle" if breakdown.device != "cpu" else "no operator runs"
        return (
            f"{where} for {breakdown.other:.0%} of each step (Python, framework and launch overhead): "
            "a larger batch or optimize.compile=true usually helps"
        )
    return None


@dataclass
class OperatorTime:
    """An operator's time over the profiled steps, per step."""

    name: str
    calls_per_step: float
    self_cpu_ms: float
    cpu_total_ms: float
    self_device_ms: float = 0.0


def top_operators(events: Any, steps: int, limit: int) -> dict[str, list[OperatorTime]]:
    """The ``limit`` operators with the most self time on the CPU and, if any ran, on the accelerator."""
    averages = [e for e in events.key_averages() if not _STEP.match(e.key) and e.key != VALIDATION_LABEL]
    per_step = max(steps, 1)

    def row(e: Any) -> OperatorTime:
        return OperatorTime(
            name=e.key,
            calls_per_step=round(e.count / per_step, 2),
            self_cpu_ms=round(e.self_cpu_time_total / per_step / 1e3, 4),
            cpu_total_ms=round(e.cpu_time_total / per_step / 1e3, 4),
            self_device_ms=round(_self_device_us(e) / per_step / 1e3, 4),
        )

    rows = {"cpu": [row(e) for e in sorted(averages, key=lambda e: -e.self_cpu_time_total)[:limit]]}
    # a record_function label's device "time" is its gpu_user_annotation range, not kernel time
    on_device = [
        e
        for e in averages
        if _self_device_us(e) > 0
        and not getattr(e, "is_user_annotation", False)
        and not _WRAPPERS.match(e.key)
    ]
    if on_device:
        rows["device"] = [row(e) for e in sorted(on_device, key=lambda e: -_self_device_us(e))[:limit]]
    return rows


def _self_device_us(event: Any) -> float:
    return float(getattr(event, "self_device_time_total", 0.0) or 0.0)


def spans_of(events: Any) -> list[Span]:
    """The profiler's events as :class:`Span` s."""
    from torch.autograd import DeviceType

    spans = []
    for event in events:
        interval = event.time_range
        on_device = event.device_type not in (DeviceType.CPU,)
        # record_function labels and, with with_stack, Python frames wrap operators rather than being one
        annotation = bool(
            getattr(event, "is_user_annotation", False) or getattr(event, "is_python_function", False)
        )
        # kernels and copies carry the correlation id of the CUDA API call that launched them
        correlation = int(getattr(event, "id", 0) or 0) if on_device or _RUNTIME.match(event.name) else 0
        spans.append(
            Span(event.name, float(interval.start), float(interval.end), on_device, annotation, correlation)
        )
    return spans


# Chrome-trace categories written by torch.profiler (Kineto), with the older spellings of torch 1.x traces
# that the TensorBoard plugin still reads; other categories (flows, "Trace", memory instants) are skipped
_TRACE_DEVICE = {"kernel", "gpu_memcpy", "memcpy", "gpu_memset", "memset", "gpu_user_annotation"}
_TRACE_HOST = {"cpu_op", "operator", "cuda_runtime", "cuda_driver", "runtime", "python"}
_TRACE_ANNOTATION = {"user_annotation", "gpu_user_annotation", "python_function"}


def spans_from_trace(trace: str | Path | Mapping[str, Any]) -> list[Span]:
    """The duration events of a trace that ``torch.profiler`` exported (``.pt.trace.json``, optionally
    gzipped, or its parsed JSON) as :class:`Span` s, so a trace from any machine can be broken down."""
    if not isinstance(trace, Mapping):
        import gzip
        import json

        path = Path(trace)
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        try:
            trace = json.loads(raw)
        except ValueError as e:
            raise ValueError(f"{path} is not a Chrome trace (JSON) from torch.profiler: {e}") from None
    events = trace.get("traceEvents") if isinstance(trace, Mapping) else None
    if not isinstance(events, list):
        raise ValueError("not a Chrome trace from torch.profiler: it has no 'traceEvents' list")
    spans = []
    for number, event in enumerate(events):
        try:
            category = str(event.get("cat", "")).lower()
            if event.get("ph") != "X" or category not in _TRACE_DEVICE | _TRACE_HOST | _TRACE_ANNOTATION:
                continue
            start = float(event["ts"])
            args = event.get("args") or {}
            spans.append(
                Span(
                    str(event.get("name", "")),
                    start,
                    start + float(event.get("dur", 0.0)),
                    on_device=category in _TRACE_DEVICE,
                    annotation=category in _TRACE_ANNOTATION,
                    correlation=int(args.get("correlation", 0) or 0),
                )
            )
        except (AttributeError, KeyError, TypeError, ValueError):
            raise ValueError(
                f"not a torch.profiler trace: event {number} is malformed: {event!r:.120}"
            ) from None
    return spans


def trace_breakdown(trace: str | Path | Mapping[str, Any], device: str | None = None) -> StepBreakdown | None:
    """:func:`step_breakdown` of an exported trace; the device is ``cuda`` if the trace has device events."""
    spans = spans_from_trace(trace)
    return step_breakdown(spans, device=device or ("cuda" if any(s.on_device for s in spans) else "cpu"))


# -- the callback -------------------------------------------------------------------------------------


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

        from perfkit.measure import quiet_profiler_logs

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
            from perfkit.measure import quiet_profiler_logs

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
        from perfkit.measure import quiet_profiler_logs

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
        write_json(report_dir / "profile.json", result)
        (report_dir / "profile.md").write_text(to_markdown(result))
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


_CPU_LABELS = {
    "data": "waiting for data",
    "compute": "compute",
    "communication": "communication (not hidden by compute)",
    "other": "other (Python, framework, idle)",
}
# the TensorBoard profiler plugin's overview categories, in its order of priority
_ACCELERATOR_LABELS = {
    "kernel": "kernel (GPU computing)",
    "memcpy": "memcpy (copies, GPU not computing)",
    "memset": "memset",
    "communication": "communication (not hidden by GPU work)",
    "runtime": "runtime (CUDA API calls: launches, syncs; GPU idle)",
    "data": "waiting for data (GPU idle)",
    "cpu_exec": "CPU operators (GPU idle)",
    "other": "other (Python, framework; GPU idle)",
}


def breakdown_lines(breakdown: Mapping[str, Any], hint_line: str | None, scope: str) -> list[str]:
    """Markdown lines: the step time, a table of where it went, and the hint."""
    lines = [
        f"{breakdown['steps']} profiled steps on {breakdown['device']}, "
        f"{breakdown['step_ms']:.2f} ms per step ({scope}).",
        "",
        "| where the step time went | share |",
        "|---|---:|",
    ]
    labels = _ACCELERATOR_LABELS if breakdown.get("device_busy") is not None else _CPU_LABELS
    lines += [f"| {label} | {breakdown[key]:.1%} |" for key, label in labels.items()]
    if breakdown.get("device_busy") is not None:
        lines.append(
            f"| **GPU utilisation** (kernels, copies or memsets running) | {breakdown['device_busy']:.1%} |"
        )
    if breakdown.get("communication_total"):
        lines.append(f"| all communication, overlapped or not | {breakdown['communication_total']:.1%} |")
    return [
        *lines,
        "",
        f"**Hint:** {hint_line}" if hint_line else "No obvious bottleneck outside compute.",
        "",
    ]


def to_markdown(result: Mapping[str, Any]) -> str:
    """``profile.md``: the breakdown, the hint and the top operators."""
    lines = ["# Step profile", ""]
    breakdown = result.get("breakdown")
    if breakdown is None:
        lines += ["No profiled step completed: see the schedule below.", ""]
    else:
        lines += breakdown_lines(breakdown, result.get("hint"), f"mean over {result['world_size']} rank(s)")
    for kind, title in (("cpu", "self CPU time"), ("device", "self accelerator time")):
        operators = result.get("top_operators", {}).get(kind)
        if not operators:
            continue
        lines += [
            f"## Top operators by {title} (rank 0, per step)",
            "",
            "| operator | calls | self CPU ms | CPU total ms | self device ms |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| `{o['name'][:80]}` | {o['calls_per_step']:g} | {o['self_cpu_ms']:.3f} | {o['cpu_total_ms']:.3f} "
            f"| {o['self_device_ms']:.3f} |"
            for o in operators
        ]
        lines.append("")
    lines += [
        f"Traces: {len(result.get('trace_files', []))} file(s), {result.get('trace_mb', 0):.1f} MB in "
        f"`{result.get('trace_dir')}` (schedule {result.get('schedule')}).",
        "",
    ]
    return "\n".join(lines)


def summary_lines(result: Mapping[str, Any]) -> list[str]:
    """A few lines for the terminal at the end of a profiled run."""
    breakdown = result.get("breakdown")
    if breakdown is None:
        return ["profile: no profiled step completed (see the warning above)"]
    on_accelerator = breakdown.get("device_busy") is not None
    names = _ACCELERATOR_LABELS if on_accelerator else _CPU_LABELS
    shares = ", ".join(f"{name} {breakdown[name]:.0%}" for name in names if breakdown.get(name))
    busy = f"GPU busy {breakdown['device_busy']:.0%}; " if on_accelerator else ""
    lines = [f"profile: {breakdown['step_ms']:.1f} ms per step: {busy}{shares}"]
    operators = (
        result.get("top_operators", {}).get("device") or result.get("top_operators", {}).get("cpu") or []
    )
    if operators:
        top = ", ".join(
            f"{o['name']} {max(o['self_device_ms'], o['self_cpu_ms']):.2f} ms" for o in operators[:3]
        )
        lines.append(f"profile: top operators per step: {top}")
    if result.get("hint"):
        lines.append(f"profile: hint: {result['hint']}")
    lines.append(
        f"profile: traces in {result['trace_dir']} ({result['trace_mb']:.1f} MB): "
        "tensorboard --logdir <run dir>, or open a .pt.trace.json in ui.perfetto.dev"
    )
    return lines

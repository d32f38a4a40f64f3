"""Where a profiled step's wall time went (data, compute, communication, other; GPU categories), and the hint."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from perfkit.profiling.intervals import Intervals, intersect, length, subtract, union

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

# hints fire above these fractions of step time
_DATA_HINT, _COMMUNICATION_HINT, _OVERHEAD_HINT = 0.2, 0.2, 0.3
_GPU_IDLE_HINT = 0.5  # below this GPU utilisation a step is launch- or CPU-bound


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

"""Profiler events and Chrome-trace files read as spans; the top operators by self time."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perfkit.profiling.breakdown import (
    _RUNTIME,
    _STEP,
    _WRAPPERS,
    VALIDATION_LABEL,
    Span,
    StepBreakdown,
    step_breakdown,
)


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

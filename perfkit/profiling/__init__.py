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

import importlib
from typing import TYPE_CHECKING, Any

# loaded on first use, so that `python -m perfkit.profile --help` answers before torch and Lightning load
_LAZY_ATTRIBUTES = {
    **dict.fromkeys(
        ["VALIDATION_LABEL", "Span", "StepBreakdown", "device_timed_steps", "hint", "step_breakdown"],
        "perfkit.profiling.breakdown",
    ),
    "TorchProfiler": "perfkit.profiling.callback",
    **dict.fromkeys(["Intervals", "intersect", "length", "subtract", "union"], "perfkit.profiling.intervals"),
    **dict.fromkeys(
        ["ProfileReport", "breakdown_lines", "summary_lines", "to_markdown"], "perfkit.profiling.report"
    ),
    **dict.fromkeys(
        ["OperatorTime", "spans_from_trace", "spans_of", "top_operators", "trace_breakdown"],
        "perfkit.profiling.trace",
    ),
}

if TYPE_CHECKING:
    from perfkit.profiling.breakdown import (
        VALIDATION_LABEL,
        Span,
        StepBreakdown,
        device_timed_steps,
        hint,
        step_breakdown,
    )
    from perfkit.profiling.callback import TorchProfiler
    from perfkit.profiling.intervals import Intervals, intersect, length, subtract, union
    from perfkit.profiling.report import breakdown_lines, summary_lines, to_markdown
    from perfkit.profiling.trace import (
        OperatorTime,
        spans_from_trace,
        spans_of,
        top_operators,
        trace_breakdown,
    )

__all__ = [
    "VALIDATION_LABEL",
    "Intervals",
    "OperatorTime",
    "ProfileReport",
    "Span",
    "StepBreakdown",
    "TorchProfiler",
    "breakdown_lines",
    "device_timed_steps",
    "hint",
    "intersect",
    "length",
    "spans_from_trace",
    "spans_of",
    "step_breakdown",
    "subtract",
    "summary_lines",
    "to_markdown",
    "top_operators",
    "trace_breakdown",
    "union",
]


def __getattr__(name: str) -> Any:
    module = _LAZY_ATTRIBUTES.get(name)
    if module is None:
        raise AttributeError(f"module 'perfkit.profiling' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

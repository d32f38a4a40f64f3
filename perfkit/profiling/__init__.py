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
from perfkit.profiling.trace import OperatorTime, spans_from_trace, spans_of, top_operators, trace_breakdown

__all__ = [
    "VALIDATION_LABEL",
    "Intervals",
    "OperatorTime",
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

"""A benchmark row: one variant of one model, timed on one device, in one mode, at one batch size;
checked field by field when read back from JSON."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any

Key = tuple[str, str, str, str, int]  # model, variant, device, mode, batch size


@dataclass
class Row:
    """One variant of one model, timed on one device, in one mode, at one batch size."""

    model: str
    variant: str
    device: str
    mode: str  # inference: a forward pass; train: forward, backward and an SGD step
    batch_size: int
    status: str = "ok"  # ok, skipped (reason says why) or failed (reason is the error)
    reason: str | None = None
    rounds: int = 0
    latency_ms_median: float | None = None
    latency_ms_p10: float | None = None
    latency_ms_p90: float | None = None
    latency_ms_iqr: float | None = None
    dispersion: float | None = None  # IQR / median of the latency samples
    noisy: bool = False  # dispersion above 0.1 even after re-measuring with more rounds: no verdict
    throughput: float | None = None  # samples per second at the median latency
    peak_memory_bytes: int | None = None  # above what was allocated before the call
    size_bytes: int | None = None  # torch.save(state_dict())
    parameters: int | None = None
    test_acc: float | None = None
    baseline: str | None = None
    speedup: float | None = None  # baseline latency / this latency, median of per-round ratios
    speedup_ci_low: float | None = None  # 95% confidence interval of that median
    speedup_ci_high: float | None = None
    speedup_p10: float | None = None
    speedup_p90: float | None = None
    precision: str | None = None  # what most of the step's FLOPs run in: bf16, tf32, fp32
    tflops: float | None = None  # model FLOPs per step / median latency
    # the step's FLOPs at the datasheet's dense peak of the precision each runs in (known GPUs), over
    # the median latency
    mfu: float | None = None
    mfu_measured: float | None = None  # the same against this machine's measured large-matmul rates
    notes: list[str] = field(default_factory=list)

    @property
    def key(self) -> Key:
        return (self.model, self.variant, self.device, self.mode, self.batch_size)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


_NUMBER_FIELDS = {f.name for f in fields(Row) if f.type in ("int", "float | None", "int | None")}
_TEXT_FIELDS = {f.name for f in fields(Row) if f.type in ("str", "str | None")}


def check_row_types(index: int, values: dict[str, Any]) -> None:
    for name, value in values.items():
        if value is None and name not in ("model", "variant", "device", "mode", "batch_size", "status"):
            continue
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if name in _NUMBER_FIELDS and number and not math.isfinite(value):
            raise TypeError(f"rows[{index}].{name}={value!r} is not finite")
        if (name in _NUMBER_FIELDS and not number) or (name in _TEXT_FIELDS and not isinstance(value, str)):
            kind = "a number" if name in _NUMBER_FIELDS else "text"
            raise TypeError(f"rows[{index}].{name}={value!r} is not {kind}")
        if name == "notes" and not (isinstance(value, list) and all(isinstance(n, str) for n in value)):
            raise TypeError(f"rows[{index}].notes={value!r} is not a list of text")


def ordered(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))

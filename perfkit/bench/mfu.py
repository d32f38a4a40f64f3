"""Model FLOPs utilisation of each measured row: the step's FLOPs (by kind) at the datasheet's peak
and at this machine's measured matmul rate, over the measured latency."""

from __future__ import annotations

import functools
from collections.abc import Mapping

import torch
from torch import nn

from perfkit.bench.report import Row
from perfkit.bench.utilization import (
    effective_precisions,
    ideal_seconds,
    matmul_tflops,
    peak_tflops,
    step_flops_by_kind,
)
from perfkit.bench.variants import eager_network, precision_of


def utilization(
    rows: Mapping[str, Row],
    variants: Mapping[str, nn.Module],
    inputs: tuple[torch.Tensor, ...],
    device: torch.device,
    mode: str,
) -> dict[str, float]:
    """Fill each measured row's TFLOP/s and MFU; return the measured matmul rates used."""

    def measured_rate(precision: str, again: bool = False) -> float:
        # the best of every measurement in this process: one taken while the machine was busy is low
        key = (device.type, precision)
        if key not in _MATMUL_RATES or again:
            _MATMUL_RATES[key] = max(_MATMUL_RATES.get(key, 0.0), matmul_tflops(device, precision))
        return _MATMUL_RATES[key]

    counted: dict[int, dict[str, int] | None] = {}
    for variant, row in rows.items():
        if not row.ok or row.latency_ms_median is None:
            continue
        network = eager_network(variants[variant])
        if id(network) not in counted:
            counted[id(network)] = step_flops_by_kind(network, tuple(t.to(device) for t in inputs), mode)
        by_kind = counted[id(network)]
        if not by_kind or not sum(by_kind.values()):
            continue
        seconds = row.latency_ms_median / 1e3
        gpu_name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
        precisions = effective_precisions(precision_of(variant), device)
        row.precision = precisions[max(by_kind, key=lambda kind: by_kind[kind])]  # most of the FLOPs
        row.tflops = sum(by_kind.values()) / seconds / 1e12
        at_peak = (
            ideal_seconds(by_kind, precisions, functools.partial(peak_tflops, gpu_name)) if gpu_name else None
        )
        row.mfu = _valid_fraction(row, at_peak / seconds if at_peak else None, "the datasheet's peak")
        at_measured = ideal_seconds(by_kind, precisions, measured_rate)
        if at_measured and at_measured > seconds:  # faster than the reference: measure it again
            at_measured = ideal_seconds(by_kind, precisions, functools.partial(measured_rate, again=True))
        row.mfu_measured = _valid_fraction(
            row, at_measured / seconds if at_measured else None, "this machine's measured matmul rate"
        )
    return {f"{device.type}/{p}": rate for (kind, p), rate in _MATMUL_RATES.items() if kind == device.type}


def _valid_fraction(row: Row, fraction: float | None, reference: str) -> float | None:
    """A utilisation above 100% means the reference is wrong for this row (a rate measured while the
    machine was busy, a FLOP count the kernels avoid, the wrong precision): no percentage, a note."""
    if fraction is None or fraction <= 1.0:
        return fraction
    row.notes.append(
        f"achieved {row.tflops:.3g} TFLOP/s, {fraction:.0%} of {reference}: that reference is invalid for this "
        "row, so no percentage is shown"
    )
    return None


# a large matmul's TFLOP/s per (device type, precision): the best measured in this process
_MATMUL_RATES: dict[tuple[str, str], float] = {}

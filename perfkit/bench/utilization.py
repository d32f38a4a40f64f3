"""Model FLOPs utilisation (MFU): the FLOPs a step needs, over its time, over what the hardware can do.

FLOPs are counted with ``torch.utils.flop_counter`` on the eager network (the model's arithmetic, the
same for every variant that computes the same function). Two references: the datasheet's dense peak
for the row's precision (a table of known GPUs), and the rate this machine measured for one large
matmul in that precision (on a CPU, the only reference).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

# dense (no sparsity) peak TFLOP/s from the vendors' datasheets: bf16, tf32, fp32
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100 PCIe": {"bf16": 756.0, "tf32": 378.0, "fp32": 51.2},
    "H100": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},  # SXM (80GB HBM3)
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L40S": {"bf16": 362.1, "tf32": 183.0, "fp32": 91.6},
    "L4": {"bf16": 121.0, "tf32": 60.0, "fp32": 30.3},
    "A10G": {"bf16": 70.0, "tf32": 35.0, "fp32": 31.2},
}
_DTYPES = {"bf16": torch.bfloat16, "tf32": torch.float32, "fp32": torch.float32}


def step_flops(model: nn.Module, inputs: tuple[torch.Tensor, ...], mode: str) -> int | None:
    """FLOPs of one inference pass or one training step (forward and backward) of ``model``; None
    when the counter can't run it."""
    by_kind = step_flops_by_kind(model, inputs, mode)
    return None if by_kind is None else sum(by_kind.values())


# convolutions obey their own TF32 switch on CUDA (torch.backends.cudnn.allow_tf32), other FLOPs
# (matmuls) the float32 matmul precision
_CONVOLUTIONS = ("convolution", "_convolution", "convolution_backward", "cudnn_convolution")


def step_flops_by_kind(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], mode: str
) -> dict[str, int] | None:
    """:func:`step_flops` split into ``conv`` (convolutions) and ``matmul`` (everything else)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    try:
        with counter:
            if mode == "inference":
                with torch.no_grad():
                    model(*inputs)
            else:
                output = model(*inputs)
                output.float().sum().backward()
                model.zero_grad(set_to_none=True)
    except Exception:
        return None
    by_kind = {"conv": 0, "matmul": 0}
    for op, flops in counter.get_flop_counts().get("Global", {}).items():
        by_kind["conv" if str(op).split(".")[-1] in _CONVOLUTIONS else "matmul"] += int(flops)
    return by_kind


def effective_precisions(precision: str, device: torch.device) -> dict[str, str]:
    """The arithmetic each kind of FLOP of a ``precision`` row runs in on ``device``. A float32 row on
    CUDA runs its convolutions in TF32 while ``torch.backends.cudnn.allow_tf32`` is on (PyTorch's
    default) and its matmuls in TF32 while the float32 matmul precision is below "highest" (the
    default is "highest"), so its MFU is against the TF32 peak for that part."""
    if precision != "fp32" or device.type != "cuda":
        return {"conv": precision, "matmul": precision}
    # the float32 rows' steps run under the process's own switches (float32_matmul changes them only
    # for tf32 rows)
    conv = "tf32" if torch.backends.cudnn.allow_tf32 else "fp32"
    matmul = "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32"
    return {"conv": conv, "matmul": matmul}


def ideal_seconds(
    flops_by_kind: dict[str, int], precisions: dict[str, str], tflops_of: Callable[[str], float | None]
) -> float | None:
    """The time a step's FLOPs take at the reference rate of the precision each kind runs in: MFU is
    this over the step's measured time. None when a rate is unknown."""
    seconds = 0.0
    for kind, flops in flops_by_kind.items():
        if not flops:
            continue
        rate = tflops_of(precisions[kind])
        if not rate:
            return None
        seconds += flops / (rate * 1e12)
    return seconds


def peak_tflops(device_name: str, precision: str) -> float | None:
    """The datasheet's dense peak for a GPU named ``device_name`` (e.g. "NVIDIA H100 80GB HBM3")."""
    for key, peaks in PEAK_TFLOPS.items():  # ordered: "H100 PCIe" before "H100"
        if key.lower() in device_name.lower():
            return peaks.get(precision)
    return None


def matmul_tflops(device: torch.device, precision: str, size: int | None = None, repeats: int = 10) -> float:
    """TFLOP/s this device reaches on one ``size``³ matmul in ``precision``: the best of ``repeats``, as a
    reference is what the hardware can do (it is measured once, not beside each row)."""
    size = size or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(size, size, device=device, dtype=_DTYPES[precision])
    b = torch.randn(size, size, device=device, dtype=_DTYPES[precision])
    with float32_matmul(precision):
        times = _times(lambda: a @ b, device, repeats)
    return 2 * size**3 / min(times) / 1e12


def _times(call: Callable[[], Any], device: torch.device, repeats: int) -> list[float]:
    call()  # warm-up: kernel selection
    times: list[float] = []
    # time-boxed: a precision without fast kernels here (bf16 on some CPUs: ~2 s a call) is still measured
    while len(times) < repeats and (len(times) < 2 or sum(times) < 2.0):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
    return times


@contextlib.contextmanager
def float32_matmul(precision: str) -> Iterator[None]:
    """TF32 for float32 matmuls and convolutions inside the block when ``precision == "tf32"``."""
    saved = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
    if precision == "tf32":
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cudnn.allow_tf32 = saved[1]

"""perfkit.profiling.breakdown and intervals: each instant of a step counted once, the GPU categories,
and the hint."""

from __future__ import annotations

import pytest

from perfkit.profiling import (
    VALIDATION_LABEL,
    Span,
    StepBreakdown,
    hint,
    intersect,
    length,
    step_breakdown,
    subtract,
    to_markdown,
    union,
)


def test_interval_arithmetic() -> None:
    assert union([(5, 7), (0, 2), (1, 3), (7, 8), (9, 9)]) == [(0, 3), (5, 8)]
    assert intersect([(0, 3), (5, 8)], [(2, 6)]) == [(2, 3), (5, 6)]
    assert subtract([(0, 10)], [(2, 3), (5, 6), (9, 12)]) == [(0, 2), (3, 5), (6, 9)]
    assert subtract([(0, 2), (4, 6)], [(1, 5)]) == [(0, 1), (5, 6)]
    assert length([(0, 3), (5, 8)]) == 6


def test_cpu_breakdown_attributes_each_instant_once() -> None:
    spans = [
        Span("ProfilerStep#3", 0, 100, annotation=True),
        Span("enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__", 0, 10, annotation=True),
        Span("aten::stack", 2, 8),  # collating: data loading, not compute
        Span("Optimizer.step#SGD.step", 10, 80, annotation=True),  # wraps the closure: not compute itself
        Span("aten::conv2d", 10, 50),
        Span("aten::convolution", 12, 48),  # nested: counted once
        Span("autograd::engine::evaluate_function: ConvolutionBackward0", 55, 80),
        Span("gloo:all_reduce", 60, 95),  # overlaps backward until 80: 15 us exposed
        # the next step holds validation, which is not part of it
        Span("ProfilerStep#4", 100, 200, annotation=True),
        Span(VALIDATION_LABEL, 150, 200, annotation=True),
        Span("aten::linear", 160, 190),  # inside validation: ignored
        Span("aten::addmm", 100, 140),
    ]
    result = step_breakdown(spans)
    assert result is not None
    window = 150  # 100 + 50 us
    assert result.steps == 2
    assert result.step_ms == pytest.approx(window / 2 / 1e3)
    assert result.data == pytest.approx(10 / window)
    assert result.compute == pytest.approx((40 + 25 + 40) / window)
    assert result.communication == pytest.approx(15 / window)
    assert result.communication_total == pytest.approx(35 / window)
    assert sum(result.fractions().values()) == pytest.approx(1)
    assert result.other == pytest.approx((5 + 5 + 10) / window)


def test_accelerator_breakdown_counts_data_wait_only_while_the_device_idles() -> None:
    spans = [
        Span("ProfilerStep#1", 0, 100, annotation=True),
        Span("enumerate(DataLoader)#_MultiProcessingDataLoaderIter.__next__", 0, 30, annotation=True),
        Span("aten::conv2d", 30, 40),  # a CPU launch: on an accelerator, compute is kernel time
        Span("void cudnn::conv_kernel", 20, 70, on_device=True),  # busy while the CPU fetched data
        Span("ncclDevKernel_AllReduce_Sum_f32", 60, 90, on_device=True),  # 20 us not hidden
    ]
    result = step_breakdown(spans, device="cuda")
    assert result is not None
    assert result.compute == pytest.approx(0.5)
    assert result.communication == pytest.approx(0.2)
    assert result.data == pytest.approx(0.2)  # 0-20: the device had nothing to do
    assert result.other == pytest.approx(0.1)
    assert result.communication_total == pytest.approx(0.3)


def _gpu_step(*work: Span) -> list[Span]:
    """One 1000 us profiled step on a CUDA device, with an optimizer label on both timelines."""
    return [
        Span("ProfilerStep#1", 0, 1000, annotation=True),
        Span("Optimizer.step#AdamW.step", 600, 1000, annotation=True),
        Span("Optimizer.step#AdamW.step", 600, 1000, on_device=True),  # its gpu_user_annotation shadow
        *work,
    ]


def test_an_idle_gpu_is_diagnosed_as_launch_bound() -> None:
    """9.34 ms steps whose kernels ran 0.2 ms were reported as "compute 90.9%": now GPU busy 2%."""
    launches = [Span("cudaLaunchKernel", 100 * i, 100 * i + 30) for i in range(10)]
    operators = [Span("aten::addmm", 100 * i + 30, 100 * i + 80) for i in range(10)]
    kernels = [Span("void gemm_kernel", 100 * i + 40, 100 * i + 42, on_device=True) for i in range(10)]
    result = step_breakdown(_gpu_step(*launches, *operators, *kernels), device="cuda")
    assert result is not None
    assert result.kernel == pytest.approx(0.02) and result.device_busy == pytest.approx(0.02)
    assert result.compute == result.kernel  # the annotation range is not kernel time
    assert result.runtime == pytest.approx(0.3)
    assert result.cpu_exec == pytest.approx(0.48)  # 50 us per launch less the 2 us kernels
    assert result.other == pytest.approx(0.2)
    assert sum(result.fractions().values()) == pytest.approx(1)
    line = hint(result)
    assert line is not None and "GPU is busy only 2%" in line and "reduce-overhead" in line
    assert "device_resident" in line


def test_a_busy_gpu_is_not_flagged() -> None:
    kernels = [Span("void conv_kernel", 0, 480, on_device=True), Span("void gemm", 500, 990, on_device=True)]
    launches = [Span("cudaLaunchKernel", 0, 5), Span("cudaLaunchKernel", 10, 15)]
    result = step_breakdown(_gpu_step(*kernels, *launches), device="cuda")
    assert result is not None
    assert result.kernel == pytest.approx(0.97) and result.device_busy == pytest.approx(0.97)
    assert result.runtime == pytest.approx(0.0)  # launches hidden behind running kernels
    assert hint(result) is None


def test_overlapping_copy_and_compute_count_once_with_kernels_first() -> None:
    spans = _gpu_step(
        Span("Memcpy HtoD (Pinned -> Device)", 0, 300, on_device=True),
        Span("void conv_kernel", 200, 700, on_device=True),  # overlaps the copy for 100 us
        Span("Memset (Device)", 650, 800, on_device=True),  # overlaps the kernel for 50 us
        Span("cudaStreamSynchronize", 800, 900),  # the CPU waits; the GPU has nothing to do
    )
    result = step_breakdown(spans, device="cuda")
    assert result is not None
    assert (result.kernel, result.memcpy, result.memset) == pytest.approx((0.5, 0.2, 0.1))
    assert result.device_busy == pytest.approx(0.8)
    assert result.runtime == pytest.approx(0.1) and result.other == pytest.approx(0.1)


def test_annotations_never_count_as_device_operators() -> None:
    from types import SimpleNamespace

    from perfkit.profiling import top_operators

    def average(key: str, device_us: float, annotation: bool = False) -> SimpleNamespace:
        return SimpleNamespace(
            key=key,
            count=1,
            self_cpu_time_total=10.0,
            cpu_time_total=10.0,
            self_device_time_total=device_us,
            is_user_annotation=annotation,
        )

    events = SimpleNamespace(
        key_averages=lambda: [
            average("Optimizer.step#AdamW.step", 3190.0, annotation=True),
            average("void gemm_kernel", 150.0),
        ]
    )
    rows = top_operators(events, steps=1, limit=5)
    assert [o.name for o in rows["device"]] == ["void gemm_kernel"]


def test_the_accelerator_report_shows_gpu_utilisation() -> None:
    from dataclasses import asdict

    from perfkit.profiling import summary_lines

    breakdown = step_breakdown(_gpu_step(Span("void k", 0, 100, on_device=True)), device="cuda")
    assert breakdown is not None
    result = {
        "breakdown": asdict(breakdown),
        "hint": hint(breakdown),
        "world_size": 1,
        "trace_dir": "t",
        "trace_mb": 0.1,
        "top_operators": {},
    }
    assert "| **GPU utilisation** (kernels, copies or memsets running) | 10.0% |" in to_markdown(result)
    assert "GPU busy 10%" in summary_lines(result)[0]


def test_python_frames_and_labels_are_not_compute() -> None:
    """With with_stack, Python frames wrap the operators like record_function labels do."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    from perfkit.profiling import spans_of

    def event(name: str, start: float, end: float, **kind: bool) -> SimpleNamespace:
        return SimpleNamespace(
            name=name,
            time_range=SimpleNamespace(start=start, end=end),
            device_type=DeviceType.CPU,
            is_user_annotation=kind.get("label", False),
            is_python_function=kind.get("frame", False),
        )

    spans = spans_of(
        [
            event("ProfilerStep#1", 0, 100, label=True),
            event("torch/nn/modules/module.py(1771): _call_impl", 0, 100, frame=True),
            event("aten::mm", 10, 30),
        ]
    )
    assert [s.annotation for s in spans] == [True, True, False]
    result = step_breakdown(spans)
    assert result is not None and result.compute == pytest.approx(0.2)


def test_no_complete_step_means_no_breakdown() -> None:
    assert step_breakdown([Span("aten::mm", 0, 10)]) is None


@pytest.mark.parametrize(
    ("fractions", "expected"),
    [
        ({"data": 0.5, "compute": 0.5, "communication": 0.0, "other": 0.0}, "DataLoader workers (now 0)"),
        ({"data": 0.0, "compute": 0.6, "communication": 0.3, "other": 0.1}, "accumulate_grad_batches"),
        ({"data": 0.0, "compute": 0.5, "communication": 0.0, "other": 0.5}, "no operator runs"),
        ({"data": 0.1, "compute": 0.8, "communication": 0.05, "other": 0.05}, None),
    ],
)
def test_hint_names_the_obvious_bottleneck(fractions: dict[str, float], expected: str | None) -> None:
    breakdown = StepBreakdown(steps=3, step_ms=10.0, **fractions)
    line = hint(breakdown, num_workers=0)
    assert (line is None) if expected is None else (line is not None and expected in line)

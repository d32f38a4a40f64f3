"""perfkit.profiling: the step breakdown's arithmetic, the callback in real runs, and the TensorBoard plugin."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import torch

from perfkit.profiling import (
    VALIDATION_LABEL,
    Span,
    StepBreakdown,
    TorchProfiler,
    hint,
    intersect,
    length,
    spans_from_trace,
    step_breakdown,
    subtract,
    to_markdown,
    trace_breakdown,
    union,
)
from perfkit.train import train
from tests.helpers import FAST, ComposeTrain, free_port, run_cli, run_failure

# profile steps 2-4 of 8 (wait 1, warmup 1, active 3): the window closes before the epoch ends
PROFILED = [*FAST, "profiler=pytorch", "profiler.schedule.skip_first=0", "trainer.limit_train_batches=8"]


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

    from perfkit.profiling import summary_lines, to_markdown

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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_real_cuda_trace_of_a_tiny_model_is_launch_bound(
    compose_train: ComposeTrain, tmp_path: Path
) -> None:
    cfg = compose_train(
        *FAST,
        "accelerator=cuda",
        "profiler=pytorch",
        "data=digits",
        "model=mlp",
        "logger=none",
        "trainer.limit_train_batches=20",
    )
    train(cfg)
    result = json.loads((tmp_path / "run" / "profile.json").read_text())
    breakdown = result["breakdown"]
    assert breakdown["device_busy"] is not None and breakdown["device_busy"] < 0.5
    assert sum(
        breakdown[k]
        for k in ("kernel", "memcpy", "memset", "communication", "runtime", "data", "cpu_exec", "other")
    ) == pytest.approx(1, abs=1e-6)
    assert "GPU is busy only" in result["hint"]
    assert all(
        not o["name"].startswith(("Optimizer.", "ProfilerStep")) for o in result["top_operators"]["device"]
    )
    # the live events and the exported trace tie kernels to their launches alike (correlation ids)
    trace = next((tmp_path / "run" / "tensorboard" / "profiler").glob("rank0.*.pt.trace.json"))
    from_file = trace_breakdown(trace)
    assert from_file is not None and from_file.device_busy is not None
    assert from_file.step_ms == pytest.approx(breakdown["step_ms"], rel=0.02)
    assert from_file.kernel == pytest.approx(breakdown["kernel"], abs=0.02)
    assert from_file.device_busy == pytest.approx(breakdown["device_busy"], abs=0.02)
    # the plugin sees the same kernels, copies and memsets in that trace
    _, plugin = _plugin_overview(json.loads(trace.read_text()))
    assert plugin["Kernel"] + plugin["Memcpy"] + plugin["Memset"] == pytest.approx(
        from_file.device_busy, abs=0.05
    )


class _Trace:
    """A Chrome trace as torch.profiler exports it for a CUDA run, in the categories of current torch
    (``cuda_runtime``, DataLoader as ``user_annotation``) or the torch 1.x spellings the plugin parses."""

    def __init__(self, current: bool) -> None:
        self.current = current
        self.events: list[dict] = []
        self._correlation = 0

    def add(
        self, category: str, name: str, ts: float, dur: float, device: bool = False, **args: object
    ) -> None:
        if device:
            args["device"] = 0
        where = {"pid": 0, "tid": 7} if device else {"pid": 1, "tid": 1}
        self.events.append(
            {"ph": "X", "cat": category, "name": name, "ts": ts, "dur": dur, **where, "args": args}
        )

    def op(self, name: str, ts: float, dur: float) -> None:
        self.add("cpu_op" if self.current else "Operator", name, ts, dur)

    def launch(self, call: str, ts: float, kind: str, name: str, device_ts: float, device_dur: float) -> None:
        self._correlation += 1
        runtime = "cuda_runtime" if self.current else "Runtime"
        self.add(runtime, call, ts, 20, correlation=self._correlation)
        category = {"kernel": "kernel", "memcpy": "gpu_memcpy", "memset": "gpu_memset"}[kind]
        self.add(
            category if self.current else kind.capitalize(),
            name,
            device_ts,
            device_dur,
            True,
            correlation=self._correlation,
        )

    def json(self) -> dict:
        return {"schemaVersion": 1, "traceEvents": self.events}


def _launch_bound(current: bool) -> dict:
    """Three 1 ms steps like the H100 report's: a batch, eight tiny GEMMs, an optimizer, a sync."""
    t = _Trace(current)
    for step in range(3):
        t0 = 10_000 + 1000 * step
        t.add("user_annotation", f"ProfilerStep#{step + 5}", t0, 1000)
        next_batch = "enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__"
        t.add("user_annotation", next_batch, t0, 100) if current else t.op(next_batch, t0, 100)
        t.op("aten::stack", t0 + 10, 80)
        t.op("aten::copy_", t0 + 100, 60)
        t.launch("cudaMemcpyAsync", t0 + 110, "memcpy", "Memcpy HtoD (Pinned -> Device)", t0 + 130, 30)
        for i in range(8):
            t.op("aten::addmm", t0 + 200 + 50 * i, 40)
            t.launch(
                "cudaLaunchKernel", t0 + 210 + 50 * i, "kernel", "void gemm_kernel", t0 + 232 + 50 * i, 4
            )
        t.op("aten::zero_", t0 + 600, 30)
        t.launch("cudaMemsetAsync", t0 + 605, "memset", "Memset (Device)", t0 + 626, 10)
        t.add("user_annotation", "Optimizer.step#AdamW.step", t0 + 650, 300)
        t.add("gpu_user_annotation", "Optimizer.step#AdamW.step", t0 + 650, 300, device=True)
        t.op("aten::_foreach_add_", t0 + 660, 200)
        t.launch("cudaLaunchKernel", t0 + 700, "kernel", "multi_tensor_apply_kernel", t0 + 720, 100)
        t.add("cuda_runtime" if current else "Runtime", "cudaStreamSynchronize", t0 + 900, 60)
    return t.json()


def _gpu_bound(current: bool) -> dict:
    """Three 100 us CPU-side steps each queueing an 800 us kernel: the GPU sets the pace."""
    t = _Trace(current)
    t.add(
        "kernel" if current else "Kernel", "void earlier_kernel", 9_900, 150, device=True
    )  # before the window
    for step in range(3):
        t0 = 10_000 + 100 * step
        t.add("user_annotation", f"ProfilerStep#{step + 5}", t0, 100)
        t.op("aten::conv2d", t0 + 10, 30)
        t.launch("cudaLaunchKernel", t0 + 15, "kernel", "void conv_kernel", 10_055 + 805 * step, 800)
    return t.json()


def _plugin_overview(trace: dict) -> tuple[float, dict[str, float]]:
    """The TensorBoard plugin's overview of a trace: mean step time (us) and each category's share."""
    from torch_tb_profiler.profiler.data import RunProfileData
    from torch_tb_profiler.profiler.event_parser import ProfileRole

    costs = RunProfileData.from_json("rank0", "1", json.loads(json.dumps(trace))).avg_costs.costs
    total = costs[ProfileRole.Total]
    return total, {role.name: costs[role] / total for role in ProfileRole if role != ProfileRole.Total}


_PLUGIN_NAMES = {
    "kernel": "Kernel",
    "memcpy": "Memcpy",
    "memset": "Memset",
    "communication": "Communication",
    "runtime": "Runtime",
    "data": "DataLoader",
    "cpu_exec": "CpuOp",
    "other": "Other",
}


@pytest.mark.parametrize("build", [_launch_bound, _gpu_bound], ids=["launch-bound", "gpu-bound"])
def test_gpu_breakdown_equals_the_plugins_overview_of_the_same_trace(build: Any) -> None:
    """On the trace spellings the plugin fully parses, all eight categories and the step time agree."""
    trace = build(current=False)
    step_us, plugin = _plugin_overview(trace)
    ours = trace_breakdown(trace)
    assert ours is not None and ours.device == "cuda"
    assert ours.step_ms * 1e3 == pytest.approx(step_us)
    assert {k: pytest.approx(v, abs=1e-6) for k, v in ours.fractions().items()} == {
        k: plugin[name] for k, name in _PLUGIN_NAMES.items()
    }


def test_known_answers_of_the_two_synthetic_traces() -> None:
    launch_bound, gpu_bound = trace_breakdown(_launch_bound(True)), trace_breakdown(_gpu_bound(True))
    assert launch_bound is not None and gpu_bound is not None
    # per 1000 us: kernels 8 x 4 + 100 us, a 30 us copy, a 10 us memset; ten 20 us API calls and a
    # 60 us sync while the GPU idles
    assert (launch_bound.kernel, launch_bound.memcpy, launch_bound.memset) == pytest.approx(
        (0.132, 0.03, 0.01)
    )
    assert launch_bound.runtime == pytest.approx(0.28)
    assert launch_bound.device_busy == pytest.approx(0.172) and launch_bound.data == pytest.approx(0.1)
    assert "GPU is busy only 17%" in (hint(launch_bound) or "")
    # the step lasts as long as its kernel (805 us), not its 100 us on the CPU
    assert gpu_bound.step_ms == pytest.approx(0.805) and gpu_bound.kernel == pytest.approx(800 / 805)
    assert hint(gpu_bound) is None


def test_the_plugin_misreads_current_traces_and_perfkit_does_not() -> None:
    """torch-tb-profiler 0.4.3 drops the ``cuda_runtime`` and ``user_annotation`` categories that
    current torch writes: no runtime, no data wait, and a GPU-bound step timed by its CPU side."""
    for build in (_launch_bound, _gpu_bound):
        old, current = trace_breakdown(build(current=False)), trace_breakdown(build(current=True))
        assert current == old  # perfkit reads both spellings alike
    step_us, plugin = _plugin_overview(_launch_bound(current=True))
    assert plugin["Runtime"] == 0 and plugin["DataLoader"] == 0 and plugin["Kernel"] == pytest.approx(0.132)
    step_us, plugin = _plugin_overview(_gpu_bound(current=True))
    assert step_us == pytest.approx(100)  # the plugin's step: the CPU side only


def test_device_timed_steps_follow_the_work_each_step_launched() -> None:
    from perfkit.profiling import device_timed_steps

    steps = [(0.0, 100.0), (100.0, 200.0), (200.0, 300.0)]
    spans = [
        Span("cudaLaunchKernel", 10, 20, correlation=1),
        Span("void k", 20, 250, on_device=True, correlation=1),  # step 0's kernel runs into step 2
        # step 1 launches nothing: it starts when step 0's work ends and has no length of its own
        Span("cudaLaunchKernel", 210, 220, correlation=2),
        Span("void k", 250, 400, on_device=True, correlation=2),
        Span("cudaLaunchKernel", 150, 350, correlation=3),  # crosses a step boundary: tied to none
        Span("void k", 400, 500, on_device=True, correlation=3),
    ]
    assert device_timed_steps(steps, spans) == [(0, 250), (250, 250), (250, 400)]
    assert device_timed_steps(steps, [Span("void k", 0, 900, on_device=True)]) == steps  # no correlation


def test_a_trace_that_is_not_one_is_a_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "rank0.1.pt.trace.json"
    bad.write_text("not json")
    with pytest.raises(ValueError, match="is not a Chrome trace"):
        spans_from_trace(bad)
    with pytest.raises(ValueError, match="no 'traceEvents' list"):
        spans_from_trace({"schemaVersion": 1})
    with pytest.raises(ValueError, match="event 1 is malformed"):
        spans_from_trace({"traceEvents": [{"ph": "M"}, {"ph": "X", "cat": "kernel", "name": "k"}]})
    gzipped = tmp_path / "rank0.2.pt.trace.json.gz"
    gzipped.write_bytes(gzip.compress(json.dumps(_gpu_bound(True)).encode()))
    assert trace_breakdown(gzipped) == trace_breakdown(_gpu_bound(True))


def test_profile_command_breaks_down_existing_traces(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from perfkit import profile

    trace = tmp_path / "rank0.1.pt.trace.json"
    trace.write_text(json.dumps(_launch_bound(current=True)))
    monkeypatch.setattr(sys, "argv", ["perfkit.profile", "--trace", str(trace)])
    with pytest.raises(SystemExit) as exit_status:
        profile.main()
    assert exit_status.value.code == 0
    out = capsys.readouterr().out
    assert f"# Step profile of `{trace}`" in out and "3 profiled steps on cuda, 1.00 ms per step" in out
    assert "| **GPU utilisation** (kernels, copies or memsets running) | 17.2% |" in out
    assert "| waiting for data (GPU idle) | 10.0% |" in out and "GPU is busy only 17%" in out

    no_steps = tmp_path / "no_steps.json"
    no_steps.write_text(
        json.dumps({"traceEvents": [{"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0}]})
    )
    for paths, message in [
        ([], "--trace needs one or more"),
        ([str(tmp_path / "missing.json")], "missing.json: No such file or directory"),
        ([str(no_steps)], "holds no complete ProfilerStep"),
        ([str(tmp_path)], "Is a directory"),
    ]:
        assert profile.report_traces(paths) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


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


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"schedule": {"activ": 3}}, "no key 'activ'"),
        ({"schedule": {"active": 0}}, "active and repeat >= 1"),
        ({"schedule": {"wait": -1}}, "integers >= 0"),
        ({"max_trace_mb": 0}, "max_trace_mb"),
    ],
)
def test_bad_profiler_settings_are_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        TorchProfiler("traces", **kwargs)
    assert "\n" not in str(error.value)


@pytest.mark.slow  # a fresh interpreter: ~10 s; the in-process test above covers the message
def test_bad_schedule_override_is_one_line_from_the_cli(tmp_path: Path) -> None:
    code, _, err = run_cli(*PROFILED, "+profiler.schedule.activ=3", "hydra.run.dir=run", cwd=tmp_path)
    assert code == 2
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith("perfkit.train: error: profiler: profiler.schedule has no key")
    )
    assert "Traceback" not in err


def test_profiled_run_writes_traces_breakdown_and_report(compose_train: ComposeTrain, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    metrics = train(compose_train(*PROFILED, output_dir=run_dir))

    traces = list((run_dir / "tensorboard" / "profiler").glob("rank0.*.pt.trace.json"))
    assert len(traces) == 1
    trace = json.loads(traces[0].read_text())
    assert sum(e.get("name", "").startswith("ProfilerStep#") for e in trace["traceEvents"]) == 3

    result = json.loads((run_dir / "profile.json").read_text())
    breakdown = result["breakdown"]
    assert breakdown["steps"] == 3 and breakdown["device"] == "cpu"
    shares = [breakdown[k] for k in ("data", "compute", "communication", "other")]
    assert sum(shares) == pytest.approx(1) and all(0 <= s <= 1 for s in shares)
    assert breakdown["compute"] > 0.5  # a small CNN on in-memory data is compute-bound
    assert breakdown["communication"] == 0
    operators = [o["name"] for o in result["top_operators"]["cpu"]]
    assert any("convolution" in name for name in operators)
    assert "Step profile" in (run_dir / "profile.md").read_text()
    assert metrics["profile"]["breakdown"] == breakdown
    assert metrics["profile"]["trace_dir"] == "tensorboard/profiler"
    # No host sync in a training step: on a GPU each .item() (or bool/float of a tensor) waits for the
    # GPU. Only AdamW reads its step counters (CPU tensors unless capturable), after the last backward
    # op of the closure that Lightning runs inside optimizer.step.
    events = sorted((e for e in trace["traceEvents"] if e.get("ph") == "X"), key=lambda e: e["ts"])
    steps = union((e["ts"], e["ts"] + e["dur"]) for e in events if e["name"].startswith("ProfilerStep#"))
    optimizer_updates = []
    for opt in (e for e in events if e["name"].startswith("Optimizer.step#")):
        backward_ends = [
            e["ts"] + e["dur"]
            for e in events
            if e["name"].startswith("autograd::engine::evaluate_function")
            and opt["ts"] <= e["ts"] <= opt["ts"] + opt["dur"]
        ]
        optimizer_updates.append((max(backward_ends), opt["ts"] + opt["dur"]))
    syncs = union((e["ts"], e["ts"] + e["dur"]) for e in events if e["name"] == "aten::_local_scalar_dense")
    assert len(optimizer_updates) == 3
    stray = subtract(intersect(syncs, steps), union(optimizer_updates))
    assert not stray, f"{len(stray)} host syncs in 3 training steps, outside the optimizer's update"
    # the exported trace, read back, gives the breakdown the callback computed from the live events
    from_file = trace_breakdown(traces[0])
    assert from_file is not None and from_file.steps == 3
    assert from_file.step_ms == pytest.approx(breakdown["step_ms"], rel=0.01)
    for share in ("data", "compute", "other"):
        assert getattr(from_file, share) == pytest.approx(breakdown[share], abs=0.01)


def test_slow_loading_is_diagnosed(compose_train: ComposeTrain, tmp_path: Path) -> None:
    cfg = compose_train(
        *PROFILED, "data=synthetic", "data.cpu_cost_ms=3", "data.num_samples=1024", "data.num_workers=0"
    )
    train(cfg)
    result = json.loads((tmp_path / "run" / "profile.json").read_text())
    # 64 samples x 3 ms of CPU per batch against a few ms of compute
    assert result["breakdown"]["data"] > 0.5
    assert "more DataLoader workers (now 0)" in result["hint"]


def test_traces_stop_at_the_size_bound(
    compose_train: ComposeTrain, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = compose_train(
        *PROFILED,
        "profiler.schedule.wait=0",
        "profiler.schedule.warmup=0",
        "profiler.schedule.active=1",
        "profiler.schedule.repeat=3",
        "profiler.max_trace_mb=0.001",
    )
    train(cfg)
    run_dir = tmp_path / "run"
    assert len(list((run_dir / "tensorboard" / "profiler").glob("*.pt.trace.json"))) == 1
    assert "not writing more" in caplog.text
    # the breakdown still covers every recorded step
    assert json.loads((run_dir / "profile.json").read_text())["breakdown"]["steps"] == 3


@pytest.mark.slow
def test_gzip_traces(compose_train: ComposeTrain, tmp_path: Path) -> None:
    train(compose_train(*PROFILED, "profiler.gzip=true", "profiler.profile_memory=false"))
    (trace,) = (tmp_path / "run" / "tensorboard" / "profiler").glob("rank0.*.pt.trace.json.gz")
    import gzip

    assert json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]


def test_too_short_a_run_warns_and_reports_no_breakdown(
    compose_train: ComposeTrain, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = train(compose_train(*FAST, "profiler=pytorch"))  # 5 batches; the schedule needs 10
    assert "before a profiled step completed (the schedule needs 10)" in caplog.text
    assert metrics["profile"]["breakdown"] is None
    assert "No profiled step completed" in to_markdown(
        json.loads((tmp_path / "run" / "profile.json").read_text())
    )


@pytest.mark.parametrize("kind", ["simple", pytest.param("advanced", marks=pytest.mark.slow)])
def test_lightning_profilers_remain_available(compose_train: ComposeTrain, tmp_path: Path, kind: str) -> None:
    train(compose_train(*FAST, f"profiler={kind}"))
    report = tmp_path / "run" / "profiler" / f"fit-{kind}.txt"
    assert report.is_file() and "training_step" in report.read_text()


def _get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_tensorboard_plugin_serves_the_profiled_run(compose_train: ComposeTrain, tmp_path: Path) -> None:
    """The real client: TensorBoard with torch-tb-profiler, on a loopback port, reading the run dir."""
    run_dir = tmp_path / "run"
    train(compose_train(*PROFILED, output_dir=run_dir))
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(run_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}/data/plugin/pytorch_profiler"
    try:
        deadline, runs = time.monotonic() + 90, {}
        while time.monotonic() < deadline:
            try:
                runs = _get_json(f"{base}/runs")  # type: ignore[assignment]
                if runs.get("runs") and not runs.get("loading"):  # type: ignore[attr-defined]
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            time.sleep(0.5)
        assert runs.get("runs") == ["tensorboard/profiler"]  # type: ignore[attr-defined]
        run = "tensorboard/profiler"
        views = _get_json(f"{base}/views?run={run}")
        assert {"Overview", "Operator", "Trace", "Memory"} <= set(views)  # type: ignore[arg-type]
        assert _get_json(f"{base}/workers?run={run}&view=Overview") == ["rank0"]
        spans = _get_json(f"{base}/spans?run={run}&worker=rank0")
        overview = _get_json(f"{base}/overview?run={run}&worker=rank0&span={spans[0]}")  # type: ignore[index]
        step_rows = overview["steps"]["rows"]  # type: ignore[index]
        assert len(step_rows) == 3  # the three profiled steps
        # perfkit's breakdown agrees with the plugin's own overview of the same trace
        plugin = overview["performance"][0]  # type: ignore[index]
        shares = {child["name"]: child["extra"] / 100 for child in plugin["children"]}
        ours = json.loads((run_dir / "profile.json").read_text())["breakdown"]
        assert ours["step_ms"] == pytest.approx(plugin["value"] / 1e3, rel=0.01)
        busy = shares.get("CPU Exec", 0) + shares.get("DataLoader", 0)
        assert ours["compute"] + ours["data"] == pytest.approx(busy, abs=0.01)
        assert ours["other"] == pytest.approx(shares.get("Other", 0), abs=0.01)
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_profile_cli_stops_once_the_schedule_is_recorded(tmp_path: Path) -> None:
    code, out, err = run_cli(
        "accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2",
        "hydra.run.dir=run",
        cwd=tmp_path,
        module="perfkit.profile",
    )
    assert code == 0, run_failure(err)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # skip 5, wait 1, warmup 1, active 3: the 11th batch's start closes the window and training stops
    # before that batch runs
    assert metrics["optimizer_steps"] == 10
    assert metrics["profile"]["breakdown"]["steps"] == 3
    assert "profile: " in out + err and "ms per step" in out + err


@pytest.mark.distributed
def test_ddp_profile_has_every_rank_and_communication(tmp_path: Path) -> None:
    code, _, err = run_cli(
        *PROFILED,
        "strategy=ddp",
        "devices=2",
        "hydra.run.dir=run",
        cwd=tmp_path,
        extra_env={"OMP_NUM_THREADS": "1"},
    )
    assert code == 0, run_failure(err)
    run_dir = tmp_path / "run"
    traces = sorted(
        p.name.split(".")[0] for p in (run_dir / "tensorboard" / "profiler").glob("*.pt.trace.json")
    )
    assert traces == ["rank0", "rank1"]
    result = json.loads((run_dir / "profile.json").read_text())
    assert result["world_size"] == 2 and [r["rank"] for r in result["per_rank"]] == [0, 1]
    # DDP's gradient all-reduce was seen on both ranks
    assert all(r["communication_total"] > 0 for r in result["per_rank"])
    trace = json.loads(next((run_dir / "tensorboard" / "profiler").glob("rank1.*.pt.trace.json")).read_text())
    assert "distributedInfo" in trace  # what the plugin's Distributed view reads

"""perfkit.profiling.trace: Chrome traces read as spans, checked against the TensorBoard plugin's
overview on real and synthetic traces, and `perfkit.profile --trace`."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from perfkit.profiling import (
    Span,
    hint,
    spans_from_trace,
    trace_breakdown,
)
from perfkit.train import train
from tests.helpers import FAST, ComposeTrain


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

"""perfkit.profiling.callback: TorchProfiler in real runs (traces, breakdown, report, DDP), the profile
command, and the TensorBoard plugin on its output."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from perfkit.profiling import (
    TorchProfiler,
    intersect,
    subtract,
    to_markdown,
    trace_breakdown,
    union,
)
from perfkit.train import train
from tests.helpers import FAST, ComposeTrain, free_port, run_cli, run_failure

# profile steps 2-4 of 8 (wait 1, warmup 1, active 3): the window closes before the epoch ends
PROFILED = [*FAST, "profiler=pytorch", "profiler.schedule.skip_first=0", "trainer.limit_train_batches=8"]


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

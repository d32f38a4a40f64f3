"""perfkit.benchmark, the report, the variant matrix (python -m perfkit.bench) and the regression gate."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import perfkit
from perfkit.bench import BenchmarkReport, Row
from perfkit.bench import compare as gate
from perfkit.bench.suite import BenchConfig, bench_config, run_bench
from perfkit.config import ConfigError, compose_config

needs_no_cuda = pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the message on a machine without CUDA"
)


class Sleeper(nn.Module):
    """Takes a known time per call, so the direction and size of a ratio are known."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.linear = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return self.linear(x)


class Broken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this variant cannot run\nsecond line")


def _classifier(correct: bool) -> nn.Linear:
    """Maps a one-hot input to its own class (or to the next one)."""
    linear = nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        eye = torch.eye(4)
        linear.weight.copy_(eye if correct else eye.roll(1, dims=0))
    return linear


# --- measurement ----------------------------------------------------------------------------


# --- perfkit.benchmark -------------------------------------------------------------------------


def test_benchmark_measures_every_variant_with_accuracy() -> None:
    inputs = torch.eye(4).repeat(4, 1)
    labels = torch.arange(4).repeat(4)
    report = perfkit.benchmark(
        {"eager": _classifier(True), "wrong": _classifier(False)},
        inputs,
        eval_data=[(inputs, labels)],
        rounds=6,
        warmup=1,
        model_name="toy",
    )
    eager, wrong = report.row("toy", "eager"), report.row("toy", "wrong")
    assert eager.test_acc == 1.0 and wrong.test_acc == 0.0
    assert eager.speedup is not None and eager.variant == eager.baseline
    assert wrong.ok and wrong.rounds in (6, 12) and wrong.parameters == 16
    assert wrong.throughput == pytest.approx(16 / (wrong.latency_ms_median / 1e3))  # type: ignore[operator]
    assert wrong.size_bytes and wrong.size_bytes > 16 * 4
    assert wrong.latency_ms_p10 <= wrong.latency_ms_median <= wrong.latency_ms_p90  # type: ignore[operator]
    assert report.environment["torch"] == torch.__version__


def test_benchmark_ratio_is_baseline_over_variant() -> None:
    report = perfkit.benchmark(
        {"fast": Sleeper(0.002), "slow": Sleeper(0.010)},
        torch.zeros(2, 4),
        rounds=6,
        warmup=1,
        baseline="fast",
    )
    slow = report.row("model", "slow")
    assert slow.speedup is not None and slow.speedup < 0.5  # 5x the time: about 0.2x
    assert slow.speedup_ci_low is not None and slow.speedup_ci_low <= slow.speedup <= slow.speedup_ci_high  # type: ignore[operator]


def test_train_mode_skips_inference_only_variants_and_records_failures() -> None:
    quantized = perfkit.quantize(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
    report = perfkit.benchmark(
        {
            "eager": nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)),
            "int8": quantized,
            "broken": Broken(),
        },
        torch.randn(8, 4),
        mode="train",
        targets=torch.randint(0, 2, (8,)),
        rounds=6,
        warmup=1,
    )
    assert report.row("model", "eager", mode="train").ok
    int8 = report.row("model", "int8", mode="train")
    assert int8.status == "skipped" and "no trainable parameters" in (int8.reason or "")
    broken = report.row("model", "broken", mode="train")
    assert broken.status == "failed" and broken.reason == "RuntimeError: this variant cannot run"


def test_train_mode_needs_targets() -> None:
    with pytest.raises(ValueError, match="needs targets"):
        perfkit.benchmark({"eager": nn.Linear(4, 2)}, torch.zeros(2, 4), mode="train")


@needs_no_cuda
def test_cuda_without_cuda_skips_with_a_reason() -> None:
    report = perfkit.benchmark({"eager": nn.Linear(4, 2)}, torch.zeros(2, 4), device="cuda", rounds=6)
    row = report.row("model", "eager", device="cuda")
    assert row.status == "skipped" and row.reason == "CUDA is not available on this machine"


# --- the report --------------------------------------------------------------------------------


def _report() -> BenchmarkReport:
    inputs = torch.eye(4)
    return perfkit.benchmark(
        {"eager": _classifier(True), "compile": _classifier(True), "broken": Broken()},
        inputs,
        eval_data=[(inputs, torch.arange(4))],
        rounds=6,
        warmup=1,
        model_name="toy",
    )


def test_report_round_trips_through_json_and_draws(tmp_path: Path) -> None:
    report = _report()
    report.rows[1].speedup_ci_low = float("nan")  # JSON has no NaN: it must become null
    written = report.save(tmp_path)
    assert {p.name for p in written} == {
        "report.json",
        "report.md",
        "latency.png",
        "accuracy_vs_latency.png",
        "size_vs_latency.png",
    }
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["rows"][1]["speedup_ci_low"] is None
    again = BenchmarkReport.from_json(tmp_path / "report.json")
    assert [r.key for r in again.rows] == [r.key for r in report.rows]
    assert again.row("toy", "eager").latency_ms_median == report.row("toy", "eager").latency_ms_median
    markdown = (tmp_path / "report.md").read_text()
    assert "## inference, cpu, batch 4" in markdown and "| toy | eager |" in markdown
    assert (
        "| cpu | failed | RuntimeError: this variant cannot run | toy: broken (inference; batch 4) |"
        in markdown
    )
    assert all(p.stat().st_size > 1000 for p in written if p.suffix == ".png")


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "no such file"), ("not json", "not a JSON benchmark report"), ("[1, 2]", "no 'rows' list")],
)
def test_reading_something_else_is_one_clear_error(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "report.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=message):
        BenchmarkReport.from_json(path)


# --- the regression gate ----------------------------------------------------------------------


def _gate_report(speedup: float, low: float, high: float, status: str = "ok") -> BenchmarkReport:
    common: dict[str, Any] = {"batch_size": 64, "rounds": 20, "baseline": "eager"}
    return BenchmarkReport(
        environment={},
        rows=[
            Row("cnn", "eager", "cpu", "inference", latency_ms_median=10.0, **common),
            Row(
                "cnn",
                "compile",
                "cpu",
                "inference",
                status=status,
                speedup=speedup if status == "ok" else None,
                speedup_ci_low=low,
                speedup_ci_high=high,
                **common,
            ),
        ],
    )


@pytest.mark.parametrize(
    ("new", "verdict", "exit_code"),
    [
        ((1.5, 1.45, 1.55), "REGRESSED", 1),  # 25% slower, intervals apart
        ((1.5, 1.2, 1.95), "slower, within noise", 0),  # 25% slower, but the intervals overlap
        ((1.95, 1.9, 2.0), "ok", 0),  # 2.5% slower: under the threshold
        ((2.6, 2.5, 2.7), "improved", 0),
        ((0.0, 0.0, 0.0, "failed"), "FAILED", 1),
    ],
)
def test_compare_gates_on_threshold_and_noise(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], new: tuple[Any, ...], verdict: str, exit_code: int
) -> None:
    base_path, new_path = tmp_path / "base.json", tmp_path / "new.json"
    _gate_report(2.0, 1.9, 2.1).to_json(base_path)
    _gate_report(*new).to_json(new_path)
    assert gate.main([str(base_path), str(new_path), "--max-regression", "10"]) == exit_code
    output = capsys.readouterr().out
    assert "| cnn | compile | cpu | inference | 64 | 2.00x [1.90-2.10] |" in output
    assert output.count(verdict) >= 1
    assert "baseline (not gated)" in output


def test_compare_rejects_a_missing_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert gate.main([str(tmp_path / "nope.json"), str(tmp_path / "nope.json")]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"perfkit.bench compare: error: {tmp_path / 'nope.json'}: no such file"
    )


# --- the matrix: python -m perfkit.bench -------------------------------------------------------


def _bench_cfg(tmp_path: Path, *overrides: str) -> Any:
    from omegaconf import OmegaConf

    cfg = compose_config("bench", list(overrides))
    OmegaConf.update(cfg, "paths.output_dir", str(tmp_path / "run"))
    return cfg


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "bench.models=[cnn,lenet]",
            "bench.models: 'lenet' is not valid; allowed: cnn, mlp, resnet18, vit, resnet50, vit_b_16",
        ),
        ("bench.variants=[eager,fp8]", "bench.variants: 'fp8' is not valid; allowed: eager, compile, bf16"),
        ("bench.modes=deploy", "bench.modes: 'deploy' is not valid; allowed: inference, train, serve"),
        ("device=tpu", "device='tpu' is not valid; allowed: cpu, cuda, cuda:N"),
        ("bench.rounds=3", "bench.rounds=3: at least 6 are needed"),
        ("bench.rounds=many", "bench.rounds='many' is not valid: expected int"),
        (
            "bench.data=cifar",
            "bench.data='cifar' is not a dataset config; allowed: digits, imagefolder, mnist",
        ),
        ("+bench.round=3", "bench: unknown option(s) round; allowed: models, variants"),
    ],
)
def test_bad_bench_options_are_one_line_errors(tmp_path: Path, override: str, message: str) -> None:
    cfg = _bench_cfg(tmp_path, override)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        bench_config(cfg)


def test_bench_matrix_writes_a_report_and_never_overwrites_it(tmp_path: Path) -> None:
    cfg = _bench_cfg(
        tmp_path,
        "bench.models=[mlp]",
        "bench.variants=[eager,prune_channels,int8_dynamic]",
        "bench.modes=[inference,train]",
        "bench.batch_sizes=[8]",
        "bench.rounds=6",
        "bench.warmup=1",
        "bench.train_epochs=0",
        "bench.devices=[cpu,cuda]",
    )
    report = run_bench(cfg)
    run = tmp_path / "run"
    assert report.complete and BenchmarkReport.from_json(run / "report.json").complete
    assert {"report.md", "latency.png", "size_vs_latency.png", "config.yaml"} <= {
        p.name for p in run.iterdir()
    }
    measured = {(r.variant, r.mode) for r in report.rows if r.ok and r.device == "cpu"}
    assert measured == {
        ("eager", "inference"),
        ("prune_channels", "inference"),
        ("int8_dynamic", "inference"),
        ("eager", "train"),
        ("prune_channels", "train"),
    }
    assert report.row("mlp", "int8_dynamic", mode="train").status == "skipped"
    assert report.row("mlp", "prune_channels").parameters < report.row("mlp", "eager").parameters  # type: ignore[operator]
    assert all(r.test_acc is None for r in report.rows)  # random weights: no accuracy claimed
    if not torch.cuda.is_available():
        assert {r.reason for r in report.rows if r.device == "cuda"} == {
            "CUDA is not available on this machine"
        }
    with pytest.raises(ConfigError, match="never overwrites"):
        run_bench(cfg)


def test_an_interrupted_bench_keeps_its_finished_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from perfkit.bench import suite

    real = suite.measure_variants
    calls = iter(range(10))

    def interrupted_on_the_second_cell(*args: Any, **kwargs: Any) -> list[Row]:
        if next(calls) == 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(suite, "measure_variants", interrupted_on_the_second_cell)
    cfg = _bench_cfg(
        tmp_path,
        "bench.models=[mlp]",
        "bench.variants=[eager,prune_unstructured]",
        "bench.modes=[inference,train]",
        "bench.rounds=6",
        "bench.warmup=1",
        "bench.train_epochs=0",
        "device=cpu",
    )
    with pytest.raises(KeyboardInterrupt):
        run_bench(cfg)
    saved = BenchmarkReport.from_json(tmp_path / "run" / "report.json")
    assert not saved.complete
    assert [(r.variant, r.mode) for r in saved.rows] == [
        ("eager", "inference"),
        ("prune_unstructured", "inference"),
    ]
    assert "**Incomplete**" in (tmp_path / "run" / "report.md").read_text()


def test_ctrl_c_while_the_bench_trains_its_model_is_an_interrupt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lightning turns a Ctrl-C in fit into sys.exit(1): the bench still saves what it has (an empty,
    incomplete report) and ends as a Ctrl-C, which the runner reports with status 130."""
    from perfkit.bench import suite
    from perfkit.errors import Interrupted

    def lightning_after_ctrl_c(*args: Any, **kwargs: Any) -> None:
        Interrupted.seen = True
        raise SystemExit(1)

    monkeypatch.setattr(Interrupted, "seen", False)
    monkeypatch.setattr(suite, "prepare", lightning_after_ctrl_c)
    cfg = _bench_cfg(tmp_path, "bench.models=[mlp]", "bench.variants=[eager]", "device=cpu")
    with pytest.raises(KeyboardInterrupt):
        run_bench(cfg)
    saved = BenchmarkReport.from_json(tmp_path / "run" / "report.json")
    assert not saved.complete and not saved.rows


def test_cli_unknown_model_is_one_line_with_exit_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "perfkit.bench", "bench.models=[lenet]", f"hydra.run.dir={tmp_path}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "perfkit.bench: error: bench.models: 'lenet' is not valid; allowed: cnn, mlp, resnet18, vit, resnet50, vit_b_16"
    )


@pytest.mark.slow
def test_quick_preset_measures_every_cpu_variant(tmp_path: Path) -> None:
    """The quick preset, shortened: every variant runs on this CPU in both modes (none fails)."""
    cfg = _bench_cfg(tmp_path, "bench.rounds=6", "bench.train_epochs=1", "device=cpu")
    report = run_bench(cfg)
    failed = [(r.model, r.variant, r.mode, r.reason) for r in report.rows if r.status == "failed"]
    assert not failed
    assert {r.status for r in report.rows if r.variant != "int8_dynamic"} == {"ok"}
    for model in ("cnn", "mlp"):
        assert report.row(model, "eager").test_acc > 0.8  # type: ignore[operator]
        assert report.row(model, "prune_channels").test_acc > 0.7  # type: ignore[operator]


@needs_no_cuda
def test_bench_on_cuda_without_cuda_skips_every_row_and_trains_nothing(tmp_path: Path) -> None:
    cfg = _bench_cfg(tmp_path, "bench.models=[mlp]", "bench.variants=[eager,int8_dynamic]", "device=cuda")
    report = run_bench(cfg)
    assert {(r.status, r.reason) for r in report.rows} == {
        ("skipped", "CUDA is not available on this machine")
    }
    assert not (tmp_path / "run" / "training" / "mlp" / "checkpoints").exists()
    assert (
        "| cuda | skipped | CUDA is not available on this machine | mlp: all variants" in report.to_markdown()
    )


def test_progress_ticks_once_per_interleaved_round() -> None:
    from perfkit.bench.core import measure_variants

    ticks: list[int] = []
    measure_variants(
        {"a": nn.Linear(4, 2), "b": nn.Linear(4, 2)},
        torch.zeros(2, 4),
        model_name="m",
        device=torch.device("cpu"),
        mode="inference",
        rounds=7,
        warmup=1,
        progress=lambda done, total: ticks.append(done),
    )
    assert ticks == [1, 2, 3, 4, 5, 6, 7]


def test_a_variant_that_fails_to_build_is_a_failed_row(monkeypatch: pytest.MonkeyPatch) -> None:
    from perfkit.bench import variants as registry
    from perfkit.bench.suite import Prepared, build_variants

    def refuse(*args: Any) -> nn.Module:
        raise RuntimeError  # no message at all

    monkeypatch.setitem(registry.VARIANTS, "compile", refuse)
    net = registry.network("mlp", (1, 28, 28), 10)
    prepared = Prepared(
        "mlp", net, None, [(torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.long))], False, {}
    )
    spec = BenchConfig(models=["mlp"], variants=["eager", "compile"], devices=["cpu"])
    variants, skipped, failed = build_variants(prepared, torch.device("cpu"), spec)
    assert failed == {"compile": "RuntimeError: no message"} and not skipped
    assert set(variants) == {"eager", "compile"}


# --- the GPU preset and model FLOPs utilisation -------------------------------------------------------
def test_flops_of_a_linear_layer_are_counted_exactly() -> None:
    from perfkit.bench.utilization import step_flops

    layer, x = nn.Linear(16, 8, bias=False), torch.randn(4, 16)
    assert step_flops(layer, (x,), "inference") == 2 * 4 * 16 * 8
    assert step_flops(layer, (x,), "train") == 2 * 2 * 4 * 16 * 8  # forward and the weight's gradient


@pytest.mark.parametrize(
    ("name", "precision", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989.4),
        ("NVIDIA H100 PCIe", "tf32", 378.0),
        ("NVIDIA H200", "fp32", 66.9),
        ("NVIDIA A100-SXM4-80GB", "bf16", 312.0),
        ("Some Future GPU", "bf16", None),
    ],
)
def test_peak_table(name: str, precision: str, peak: float | None) -> None:
    from perfkit.bench.utilization import peak_tflops

    assert peak_tflops(name, precision) == peak


def test_mfu_is_flops_over_time_over_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    import perfkit.bench.core as core
    import perfkit.bench.mfu as mfu
    from perfkit.bench.utilization import step_flops

    monkeypatch.setattr(mfu, "_MATMUL_RATES", {("cpu", "fp32"): 2.0, ("cpu", "bf16"): 4.0})
    net, x = nn.Linear(64, 64), torch.randn(32, 64)
    rows = core.measure_variants(
        {"eager": net, "bf16": perfkit.bench.variants.Autocast(net)},
        x,
        model_name="linear",
        device=torch.device("cpu"),
        mode="inference",
        rounds=6,
        warmup=1,
    )
    flops = step_flops(net, (x,), "inference")
    for row in rows:
        assert row.tflops == pytest.approx(flops / (row.latency_ms_median / 1e3) / 1e12)  # type: ignore[operator]
        reference = 4.0 if row.variant == "bf16" else 2.0
        assert row.mfu_measured == pytest.approx(row.tflops / reference)  # type: ignore[operator]
        assert row.mfu is None  # no datasheet peak for a CPU


def test_convolution_flops_are_counted_apart_from_matmuls() -> None:
    from perfkit.bench.utilization import step_flops, step_flops_by_kind

    net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.Flatten(), nn.Linear(4 * 6 * 6, 5, bias=False))
    x = torch.randn(2, 3, 8, 8)
    conv = 2 * 2 * 4 * 6 * 6 * 3 * 3 * 3  # 2 FLOPs per multiply-add, per output element and kernel tap
    matmul = 2 * 2 * (4 * 6 * 6) * 5
    assert step_flops_by_kind(net, (x,), "inference") == {"conv": conv, "matmul": matmul}
    # training: the forward, and the gradients of the weights and of the conv's input-side layers
    by_kind = step_flops_by_kind(net, (x,), "train")
    assert by_kind is not None and by_kind["conv"] >= 2 * conv and by_kind["matmul"] >= 2 * matmul
    assert step_flops(net, (x,), "train") == sum(by_kind.values())


@pytest.mark.parametrize(
    ("cudnn_tf32", "matmul_precision", "expected"),
    [
        (True, "highest", {"conv": "tf32", "matmul": "fp32"}),  # PyTorch's defaults
        (False, "highest", {"conv": "fp32", "matmul": "fp32"}),
        (True, "high", {"conv": "tf32", "matmul": "tf32"}),
    ],
)
def test_a_float32_row_on_cuda_counts_what_tf32_switches_allow(
    monkeypatch: pytest.MonkeyPatch, cudnn_tf32: bool, matmul_precision: str, expected: dict[str, str]
) -> None:
    """The H100 report showed float32 ResNet-50 at 109% of the fp32 peak: its convolutions ran in TF32."""
    from perfkit.bench.utilization import effective_precisions

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", cudnn_tf32)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(matmul_precision)
    try:
        assert effective_precisions("fp32", torch.device("cuda")) == expected
        assert effective_precisions("fp32", torch.device("cpu")) == {"conv": "fp32", "matmul": "fp32"}
        assert effective_precisions("bf16", torch.device("cuda")) == {"conv": "bf16", "matmul": "bf16"}
        assert effective_precisions("tf32", torch.device("cuda")) == {"conv": "tf32", "matmul": "tf32"}
    finally:
        torch.set_float32_matmul_precision(previous)


def test_ideal_time_adds_each_kind_at_its_own_rate() -> None:
    from perfkit.bench.utilization import ideal_seconds, peak_tflops

    h100 = "NVIDIA H100 80GB HBM3"
    by_kind = {"conv": 494_700_000_000_000, "matmul": 66_900_000_000_000}  # one second of each at peak
    precisions = {"conv": "tf32", "matmul": "fp32"}
    assert ideal_seconds(by_kind, precisions, lambda p: peak_tflops(h100, p)) == pytest.approx(2.0)
    assert ideal_seconds({"conv": 0, "matmul": 10**12}, precisions, {"fp32": 1.0}.get) == pytest.approx(1.0)
    assert ideal_seconds(by_kind, precisions, lambda p: None) is None  # an unknown GPU: no MFU


# bench=gpu shrunk to run on this CPU in seconds
GPU_PRESET_ON_A_CPU = [
    "bench=gpu",
    "device=cpu",
    "bench.image_size=32",
    "bench.batch_sizes=[2]",
    "bench.rounds=6",
    "bench.warmup=1",
    "bench.data_options.num_samples=40",
]


@pytest.mark.slow  # ~45 s: bf16 rows on an AVX2 CPU take the slow path
def test_gpu_preset_runs_at_a_reduced_size_on_the_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bench=gpu is one command on an H100; here its models and variants run small, as a check."""
    import perfkit.bench.suite as suite

    forgotten: list[str] = []
    monkeypatch.setattr(suite, "forget_compiled_graphs", lambda device: forgotten.append(device.type))
    cfg = _bench_cfg(
        tmp_path,
        *GPU_PRESET_ON_A_CPU,
        "bench.models=[resnet50]",
        "bench.variants=[eager,tf32,bf16_channels_last,cuda_graphs]",
    )
    report = run_bench(cfg)
    assert {(r.variant, r.status) for r in report.rows} == {
        ("eager", "ok"),
        ("bf16_channels_last", "ok"),
        ("tf32", "skipped"),
        ("cuda_graphs", "skipped"),
    }
    eager = report.row("resnet50", "eager", mode="train")
    assert eager.precision == "fp32" and eager.tflops and eager.mfu_measured
    assert report.row("resnet50", "bf16_channels_last", mode="train").precision == "bf16"
    assert set(report.config["matmul_tflops"]) == {"cpu/fp32", "cpu/bf16"}
    assert (
        "| TFLOP/s | % of datasheet peak | % of measured matmul rate |"
        in (tmp_path / "run" / "report.md").read_text()
    )
    cells = {(r.model, r.device, r.mode, r.batch_size) for r in report.rows}
    assert sorted(forgotten) == sorted(device for _, device, _, _ in cells)  # after every cell


def test_forgetting_compiled_graphs_drops_compiled_code() -> None:
    """What the suite calls between cells: afterwards a compiled function compiles again (and a CUDA
    graph pool captured with the old code is released; the gpu test checks the memory)."""
    from torch._dynamo.utils import counters

    from perfkit.bench.suite import forget_compiled_graphs

    compiled = torch.compile(lambda x: x * 2 + 1, backend="eager")
    x = torch.randn(4)
    compiled(x)
    before = counters["stats"]["unique_graphs"]
    compiled(x)
    assert counters["stats"]["unique_graphs"] == before  # cached
    forget_compiled_graphs(torch.device("cpu"))
    compiled(x)
    assert counters["stats"]["unique_graphs"] == before + 1


@pytest.mark.slow
def test_the_hand_written_anchor_and_compiled_variants_run(tmp_path: Path) -> None:
    cfg = _bench_cfg(
        tmp_path,
        *GPU_PRESET_ON_A_CPU,
        "bench.models=[vit_b_16]",
        "bench.variants=[eager,bf16_channels_last_compile,handwritten]",
    )
    report = run_bench(cfg)
    assert {r.status for r in report.rows} == {"ok"}, [r.reason for r in report.rows]
    assert report.row("vit_b_16", "handwritten", mode="train").precision == "bf16"

"""perfkit.bench.suite: the `python -m perfkit.bench` matrix, its presets, its run directory, Ctrl-C
and a missing GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from perfkit.bench import BenchmarkReport, Row
from perfkit.bench.suite import bench_config, run_bench
from perfkit.config import ConfigError, compose_config

needs_no_cuda = pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the message on a machine without CUDA"
)


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

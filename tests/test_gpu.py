"""CUDA runs of the training job. Selected with `pytest -m gpu`; they skip without a CUDA device."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from perfkit.train import train
from tests.helpers import FAST, ComposeTrain, run_cli, run_failure

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_trains_on_cuda(compose_train: ComposeTrain, precision: str) -> None:
    cfg = compose_train(*FAST, "accelerator=cuda", "devices=1", f"precision={precision}", "logger=none")
    metrics = train(cfg)
    assert metrics["device"].startswith("cuda (")
    assert metrics["precision"] == precision
    assert 0 <= metrics["test"]["acc"] <= 1


def test_pin_memory_is_on_exactly_when_training_on_cuda(compose_train: ComposeTrain) -> None:
    from hydra.utils import instantiate

    from perfkit.build import build_strategy

    # a DataLoader is what pins: with device-resident data (the default on CUDA) no batch is copied
    cfg = compose_train(*FAST, "accelerator=cuda", "data.device_resident=false")
    datamodule = instantiate(cfg.data)
    trainer = instantiate(cfg.trainer, strategy=build_strategy("auto"), logger=False)
    datamodule.trainer = trainer
    datamodule.setup()
    assert datamodule.train_dataloader().pin_memory is True


def _cuda_cli(tmp_path: Path, *overrides: str) -> dict[str, Any]:
    code, _, err = run_cli(
        "accelerator=cuda", "debug=fast", "trainer.enable_progress_bar=false", "logger=none",
        "hydra.run.dir=run", *overrides, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert code == 0, run_failure(err)[-3000:]
    return json.loads((tmp_path / "run" / "metrics.json").read_text())  # type: ignore[no-any-return]


@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
def test_ddp_uses_nccl_on_one_gpu(tmp_path: Path, strategy: str) -> None:
    metrics = _cuda_cli(tmp_path, f"strategy={strategy}", "devices=1")
    assert metrics["process_group_backend"] == "nccl"
    assert metrics["world_size"] == 1 and metrics["device"].startswith("cuda (")
    assert metrics["data_loading"]["pin_memory"] is True


def test_compile_and_bf16_survive_ddp_on_cuda(tmp_path: Path) -> None:
    """Failed on the H100's torch 2.11 before the compile fix (dynamo captured nothing under Lightning);
    passed there on 2026-11-24 (benchmarks/results/gpu_tests-h100-2026-11-24_01-38-12.txt)."""
    metrics = _cuda_cli(
        tmp_path, "strategy=ddp", "devices=1", "precision=bf16-mixed", "optimize.compile=true"
    )
    assert metrics["process_group_backend"] == "nccl"
    assert metrics["optimize"]["compiled_graphs_per_rank"][0] >= 1
    assert not metrics["optimize"]["fell_back_to_eager"]


def test_more_gpus_than_exist_is_one_line(tmp_path: Path) -> None:
    code, _, err = run_cli(
        "accelerator=cuda", f"devices={torch.cuda.device_count() + 1}", "strategy=ddp", cwd=tmp_path
    )
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("perfkit.train: error: ")


def test_benchmark_on_cuda_measures_every_gpu_variant() -> None:
    import perfkit
    from perfkit.bench.variants import Settings, build, network

    net = network("cnn", (1, 28, 28), 10).cuda().eval()
    built: dict[str, Any] = {}
    settings = Settings(example_inputs=torch.zeros(1, 1, 28, 28))
    variants = {name: build(name, net, built, settings) for name in ("eager", "compile", "bf16")}
    variants["int8_dynamic"] = net  # skipped by its name: int8 is not built on a GPU
    images = torch.randn(32, 1, 28, 28)
    report = perfkit.benchmark(variants, images, device="cuda", rounds=6, warmup=2, model_name="cnn")
    for name in ("eager", "compile", "bf16"):
        row = report.row("cnn", name, device="cuda")
        assert row.ok and row.peak_memory_bytes and row.peak_memory_bytes > 0
    assert (
        report.row("cnn", "int8_dynamic", device="cuda").reason
        == "int8 dynamic quantization runs on the CPU only"
    )
    train = perfkit.benchmark(
        {"eager": net}, images, device="cuda", mode="train", targets=torch.randint(0, 10, (32,)), rounds=6
    )
    assert train.row("model", "eager", device="cuda", mode="train").ok


def test_cuda_graph_pools_are_released_between_bench_cells() -> None:
    """On the H100, ResNet-50's reduce-overhead pools stayed allocated into the ViT-B/16 cells (37 GB
    in private pools, then out of memory); the suite now forgets compiled graphs after each cell."""
    from torch import nn

    from perfkit.bench.suite import forget_compiled_graphs

    net = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1)).cuda()
    x = torch.randn(64, 3, 64, 64, device="cuda")
    forget_compiled_graphs(torch.device("cuda"))
    before = torch.cuda.memory_reserved()
    compiled = torch.compile(net, mode="reduce-overhead")  # still referenced, as the suite's variants are
    for _ in range(4):  # warm-up runs, then the captured graph replays
        compiled(x).sum().backward()
    torch.cuda.synchronize()
    held = torch.cuda.memory_reserved() - before
    assert held > 64 * 2**20  # the pool keeps the step's activations (64 MiB a conv output)
    forget_compiled_graphs(torch.device("cuda"))
    assert torch.cuda.memory_reserved() - before < held / 4

"""perfkit.bench.core (perfkit.benchmark): variants timed side by side, ratios, skipped and failed rows."""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch
from torch import nn

import perfkit
from perfkit.bench.suite import BenchConfig
from tests.helpers.checks import classifier
from tests.helpers.toy_models import FailingVariant

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


def test_benchmark_measures_every_variant_with_accuracy() -> None:
    inputs = torch.eye(4).repeat(4, 1)
    labels = torch.arange(4).repeat(4)
    report = perfkit.benchmark(
        {"eager": classifier(True), "wrong": classifier(False)},
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
            "broken": FailingVariant(),
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

"""perfkit.bench.mfu and utilization: FLOPs counted exactly by kind, each at its own rate, and a
utilisation above 100% shown as a wrong reference."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import perfkit


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

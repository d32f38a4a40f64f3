"""perfkit.quantize's backend: chosen by timing torch.ao and torchao on the caller's inputs, recorded."""

from __future__ import annotations

import pytest
import torch

import perfkit
from tests.helpers.toy_models import TinyMLP


def _choice(model: torch.nn.Module) -> dict:
    return perfkit.reports(model)[-1].measured


def test_auto_times_both_libraries_and_keeps_the_faster() -> None:
    model = TinyMLP().eval()
    quantized = perfkit.quantize(model, example_inputs=torch.randn(16, 32))
    choice = _choice(quantized)
    timed = choice["median_ms"]
    assert set(timed) == {"torch_ao", "torchao"} and all(v > 0 for v in timed.values())
    chosen = min(timed, key=timed.get)
    assert perfkit.reports(quantized)[-1].transform.endswith(f"backend={chosen})")
    assert choice["run"] == "eager" and "cpu_simd" in choice and "cpu_model" in choice
    assert f"chose {chosen}" in choice["note"] and choice["note"] in perfkit.reports(quantized)[-1].notes
    x = torch.randn(5, 32)
    torch.testing.assert_close(quantized(x), model(x), atol=0.05, rtol=0.05)


def test_auto_without_inputs_says_it_measured_nothing() -> None:
    quantized = perfkit.quantize(TinyMLP())
    assert "nothing to time" in _choice(quantized)["note"]
    assert perfkit.reports(quantized)[-1].transform.endswith("backend=torch_ao)")


def test_a_backend_that_fails_on_the_model_is_named_and_the_other_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from perfkit.optim import quantization

    def broken(model: torch.nn.Module, scheme: str) -> torch.nn.Module:
        raise RuntimeError("no kernel for this layer")

    monkeypatch.setattr(quantization, "_torchao", broken)
    quantized = perfkit.quantize(TinyMLP(), example_inputs=torch.randn(4, 32))
    choice = _choice(quantized)
    assert (
        set(choice["median_ms"]) == {"torch_ao"} and "no kernel for this layer" in choice["failed"]["torchao"]
    )


def test_weight_only_is_torchaos() -> None:
    with pytest.raises(ValueError, match="int8_weight_only is torchao's"):
        perfkit.quantize(TinyMLP(), scheme="int8_weight_only", backend="torch_ao")
    model = TinyMLP().eval()
    quantized = perfkit.quantize(model, scheme="int8_weight_only", example_inputs=torch.randn(4, 32))
    assert perfkit.reports(quantized)[-1].transform == "quantize(scheme=int8_weight_only, backend=torchao)"
    x = torch.randn(3, 32)
    torch.testing.assert_close(quantized(x), model(x), atol=0.05, rtol=0.05)


def test_static_int8_through_torchaos_pt2e_flow() -> None:
    from tests.helpers.toy_models import TinyConvNet

    torch.manual_seed(0)
    model = TinyConvNet().eval()
    x = model.example_inputs()
    calibration = [torch.randn(4, *x.shape[1:]) for _ in range(3)]
    quantized = perfkit.quantize(model, scheme="int8_static", example_inputs=x, calibration=calibration)
    assert perfkit.reports(quantized)[-1].transform == "quantize(scheme=int8_static, backend=torchao)"
    other = torch.randn(7, *x.shape[1:])  # another batch size: the batch stays dynamic
    with torch.no_grad():
        first = quantized(other)
        quantized.train()  # an inference graph stays one (Lightning and perfkit call train/eval)
        assert quantized.eval() is quantized
        torch.testing.assert_close(quantized(other), first)
        torch.testing.assert_close(first, model(other), atol=0.05, rtol=0.1)


class _Branchy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        return y if y.sum() > 0 else -y


def test_static_int8_needs_inputs_and_names_the_alternative_when_pt2e_cannot() -> None:
    with pytest.raises(ValueError, match="int8_static calibrates activation ranges: pass example_inputs"):
        perfkit.quantize(TinyMLP(), scheme="int8_static")
    # Which models pt2e can partition depends on the torch version (ResNet-18 fails on 2.14, not on
    # 2.11); a branch on a tensor's value fails torch.export on every version.
    with pytest.raises(ValueError, match=r"pt2e flow cannot quantize this model .*onnx_int8_static"):
        perfkit.quantize(_Branchy().eval(), scheme="int8_static", example_inputs=torch.randn(2, 32))

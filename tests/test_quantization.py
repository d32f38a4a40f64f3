"""perfkit.quantize: int8 on perfkit's and users' models, its reports, and the backend chosen by timing
torch.ao and torchao on the caller's inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import perfkit
from perfkit.models import MLP, vit
from perfkit.optim import quantize, reports
from tests.helpers.checks import assert_untouched, round_trip, snapshot
from tests.helpers.toy_models import TOY_MODELS, ConvOnly, TinyConvNet, TinyMLP


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


DIGIT = (1, 28, 28)


@pytest.mark.parametrize("name", ["mlp", "gru"])
def test_int8_dynamic_on_user_models(name: str) -> None:
    torch.manual_seed(0)
    model = TOY_MODELS[name]().eval()
    before = snapshot(model)
    x = model.example_inputs()  # type: ignore[operator]
    quantized = quantize(model)
    assert_untouched(model, before)
    expected, got = model(x), quantized(x)
    # int8 weights and activations: close, not equal
    assert float((got - expected).norm() / expected.norm()) < 0.05
    report = reports(quantized)[-1]
    assert report.changed == ({"Linear": 3} if name == "mlp" else {"GRU": 1, "Linear": 1})
    assert report.params_after == report.params_before
    # small tensors carry fixed serialization overhead: the ratio grows with the model
    assert report.size_ratio > (2.0 if name == "mlp" else 1.5)


def test_int8_dynamic_linear_weights_are_about_four_times_smaller() -> None:
    report = reports(quantize(MLP(DIGIT, 10)))[-1]
    assert report.size_ratio >= 3.5


def test_quantized_model_round_trips() -> None:
    model = TinyMLP().eval()
    quantized = quantize(model)
    x = TinyMLP.example_inputs()
    torch.testing.assert_close(round_trip(quantized)(x), quantized(x))
    # a state dict loads into a freshly quantized copy of the same architecture
    fresh = quantize(TinyMLP())
    fresh.load_state_dict(quantized.state_dict())
    torch.testing.assert_close(fresh(x), quantized(x))


def test_quantize_reports_what_it_left_alone() -> None:
    report = reports(quantize(vit(DIGIT, 10)))[-1]
    assert report.changed == {"Linear": 9}
    # attention's fused projections are not dynamically quantizable; the report says so
    assert report.skipped["NonDynamicallyQuantizableLinear"] == 4
    assert report.skipped["LayerNorm"] == 9


def test_nothing_quantizable_warns_and_changes_nothing() -> None:
    model = ConvOnly()
    with pytest.warns(UserWarning, match=r"nothing to quantize.*found: Conv2d.*returned unchanged"):
        quantized = quantize(model)
    x = torch.randn(1, 1, 5, 5)
    torch.testing.assert_close(quantized(x), model(x))
    assert reports(quantized)[-1].changed == {}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scheme": "int4"}, "unknown quantization scheme 'int4'; allowed: int8_dynamic"),
        (
            {"backend": "tensorrt"},
            "unknown quantization backend 'tensorrt'; allowed: auto, torch_ao, torchao",
        ),
    ],
)
def test_quantize_errors_say_what_is_allowed(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        quantize(TinyMLP(), **kwargs)


def _transformer() -> nn.Module:
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
    return nn.TransformerEncoder(layer, 2).eval()


@pytest.mark.hostile
def test_quantize_hands_back_a_transformer_that_runs() -> None:
    model, x = _transformer(), torch.randn(2, 5, 32)
    with pytest.warns(UserWarning, match="no layer could be quantized"):
        quantized = perfkit.quantize(model, example_inputs=x)
    with torch.inference_mode():
        assert torch.allclose(quantized(x), model(x), atol=1e-5)
    assert any("kept in fp32" in note for note in perfkit.optim.reports(quantized)[-1].notes)


@pytest.mark.hostile
def test_quantize_still_quantizes_the_rest_of_a_model_with_a_transformer() -> None:
    model = nn.Sequential(_transformer(), nn.Flatten(), nn.Linear(5 * 32, 4)).eval()
    quantized = perfkit.quantize(model, example_inputs=torch.randn(2, 5, 32))
    assert perfkit.optim.reports(quantized)[-1].changed == {"Linear": 1}

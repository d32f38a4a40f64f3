"""perfkit.compile / prune / quantize on perfkit's models and on small user models."""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn

import perfkit
from perfkit.models import MLP, SmallCNN, resnet18, vit
from perfkit.optim import CompiledModule, compile, prune, quantize, reports
from tests.helpers.toy_models import TOY_MODELS, ConvOnly, TinyConvNet, TinyMLP

DIGIT = (1, 28, 28)
PERFKIT_MODELS: dict[str, Callable[[], nn.Module]] = {
    "cnn": lambda: SmallCNN(DIGIT, 10),
    "mlp": lambda: MLP(DIGIT, 10),
    "resnet18": lambda: resnet18(DIGIT, 10),
    "vit": lambda: vit(DIGIT, 10),
}
MASK_METHODS = ["l1_unstructured", "random_unstructured", "global_l1", "ln_structured"]


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_untouched(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert not hasattr(model, "perfkit_reports")


def _round_trip(model: nn.Module) -> nn.Module:
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)  # type: ignore[no-any-return]


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]


def test_top_level_names_are_the_transforms() -> None:
    assert perfkit.compile is compile and perfkit.prune is prune and perfkit.quantize is quantize


# --- pruning ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["l1_unstructured", "random_unstructured"])
@pytest.mark.parametrize("amount", [0.0, 0.3, 0.5, 0.9])
def test_per_layer_unstructured_sparsity_is_exact(method: str, amount: float) -> None:
    model = TinyConvNet()
    pruned = prune(model, amount=amount, method=method)
    for weight in _weights(pruned):
        assert int((weight == 0).sum()) == round(amount * weight.numel())


def test_global_l1_sparsity_is_exact_over_all_layers() -> None:
    pruned = prune(TinyMLP(), amount=0.6, method="global_l1")
    weights = _weights(pruned)
    total = sum(w.numel() for w in weights)
    assert sum(int((w == 0).sum()) for w in weights) == round(0.6 * total)
    # global: layers end up with different sparsities
    assert len({round(float((w == 0).float().mean()), 3) for w in weights}) > 1


def test_ln_structured_zeroes_whole_rows_and_keeps_the_output_layer() -> None:
    model = TinyMLP()
    pruned = prune(model, amount=0.5, method="ln_structured")
    *hidden, output = _weights(pruned)
    for weight in hidden:
        zero_rows = int((weight.abs().sum(dim=1) == 0).sum())
        assert zero_rows == round(0.5 * weight.shape[0])
    assert torch.equal(output, _weights(model)[-1])


@pytest.mark.parametrize("method", MASK_METHODS)
def test_masks_are_permanent_and_reported_honestly(method: str) -> None:
    model = TinyConvNet()
    before = _snapshot(model)
    pruned = prune(model, amount=0.5, method=method)
    _assert_untouched(model, before)
    assert not any(k.endswith(("_orig", "_mask")) for k in pruned.state_dict())
    assert set(pruned.state_dict()) == set(model.state_dict())
    report = reports(pruned)[-1]
    assert report.params_before == report.params_after
    assert report.sparsity_before == 0.0 and report.sparsity_after > 0.3
    assert any("no speed-up" in note for note in report.notes)
    # the pruned weights load into the user's own architecture
    fresh = TinyConvNet()
    fresh.load_state_dict(pruned.state_dict())
    x = TinyConvNet.example_inputs()
    torch.testing.assert_close(fresh.eval()(x), pruned.eval()(x))


@pytest.mark.parametrize("name", PERFKIT_MODELS)
def test_channel_pruning_shrinks_perfkit_models(name: str) -> None:
    model = PERFKIT_MODELS[name]().eval()
    before = _snapshot(model)
    x = torch.randn(2, *DIGIT)
    pruned = prune(model, amount=0.5, method="channels", example_inputs=x[:1])
    _assert_untouched(model, before)
    assert pruned(x).shape == (2, 10)  # the output layer keeps its size
    report = reports(pruned)[-1]
    # the first layer keeps its inputs (pixels), so the MLP keeps more; vit keeps its attention widths
    kept = {"cnn": 0.4, "resnet18": 0.4, "mlp": 0.5, "vit": 0.8}[name]
    assert report.params_after < kept * report.params_before
    assert report.size_bytes_after < report.size_bytes_before
    assert sum(report.changed.values()) > 0
    torch.testing.assert_close(_round_trip(pruned)(x), pruned(x))


@pytest.mark.parametrize("name", ["mlp", "conv"])
def test_channel_pruning_on_user_models(name: str) -> None:
    model = TOY_MODELS[name]().eval()
    x = model.example_inputs()  # type: ignore[operator]
    pruned = prune(model, amount=0.5, method="channels", example_inputs=x[:1])
    assert pruned(x).shape == model(x).shape
    assert reports(pruned)[-1].params_after < reports(pruned)[-1].params_before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"amount": 1.0}, r"amount must be a number in \[0, 1\), got 1.0"),
        ({"amount": -0.1}, r"amount must be a number in \[0, 1\)"),
        ({"amount": "half"}, r"amount must be a number in \[0, 1\)"),
        (
            {"amount": 0.5, "method": "l3"},
            "unknown pruning method 'l3'; allowed: l1_unstructured, random_unstructured",
        ),
        ({"amount": 0.5, "method": "channels"}, "method='channels' needs example_inputs"),
    ],
)
def test_prune_errors_say_what_is_allowed(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        prune(TinyMLP(), **kwargs)  # type: ignore[arg-type]


# --- quantization ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mlp", "gru"])
def test_int8_dynamic_on_user_models(name: str) -> None:
    torch.manual_seed(0)
    model = TOY_MODELS[name]().eval()
    before = _snapshot(model)
    x = model.example_inputs()  # type: ignore[operator]
    quantized = quantize(model)
    _assert_untouched(model, before)
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
    torch.testing.assert_close(_round_trip(quantized)(x), quantized(x))
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


# --- compile ---------------------------------------------------------------------------------------


def test_compile_matches_eager_and_leaves_the_input_alone() -> None:
    model = TinyConvNet().eval()
    before = _snapshot(model)
    compiled = compile(model)
    x = TinyConvNet.example_inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback
        got = compiled(x)
    torch.testing.assert_close(got, model(x), rtol=1e-4, atol=1e-5)
    assert compiled.fallback_reason is None
    _assert_untouched(model, before)
    assert reports(compiled)[-1].transform == "compile(mode=default, backend=inductor)"


def test_compiled_weights_round_trip_into_the_eager_model() -> None:
    model = TinyMLP()
    compiled = compile(model, backend="eager")
    assert list(compiled.state_dict()) == list(model.state_dict())  # no prefix
    fresh = TinyMLP()
    fresh.load_state_dict(compiled.state_dict())
    x = TinyMLP.example_inputs()
    torch.testing.assert_close(fresh(x), compiled(x))
    assert isinstance(_round_trip(compiled), CompiledModule)


class _CallsTorchRelu(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) * 2


def test_failed_compilation_falls_back_to_eager_with_the_reason() -> None:
    model = _CallsTorchRelu()  # torch.relu is what this test backend refuses to compile
    compiled = compile(model, backend="relu_compile_error_TESTING_ONLY")
    x = torch.randn(3, 4)
    with pytest.warns(UserWarning, match=r"torch.compile failed, running eager instead \(.+\)"):
        out = compiled(x)
    torch.testing.assert_close(out, model(x))
    assert compiled.fallback_reason
    torch.testing.assert_close(compiled(x), model(x))  # stays eager, no second warning needed


def test_errors_of_the_input_are_not_hidden_by_the_fallback() -> None:
    compiled = compile(TinyMLP(), backend="eager")
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        compiled(torch.randn(2, 7))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "fast"}, "unknown compile mode 'fast'; allowed: default, reduce-overhead"),
        ({"backend": "nope"}, "unknown compile backend 'nope'; allowed: .*inductor"),
        ({"dynamic": "yes"}, "dynamic must be true, false or null"),
    ],
)
def test_compile_errors_say_what_is_allowed(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compile(TinyMLP(), **kwargs)  # type: ignore[arg-type]


# --- composition -----------------------------------------------------------------------------------


def test_transforms_compose_and_reports_accumulate() -> None:
    model = MLP(DIGIT, 10).eval()
    x = torch.randn(4, *DIGIT)
    pruned = prune(model, amount=0.5, method="channels", example_inputs=x[:1])
    quantized = quantize(pruned)
    assert [r.transform.split("(")[0] for r in reports(quantized)] == ["prune", "quantize"]
    # a later transform sees the quantized layers as layers
    assert reports(compile(quantized, backend="eager"))[-1].skipped == {"Linear": 3}
    assert quantized(x).shape == (4, 10)
    first, second = reports(quantized)
    assert math.isclose(first.params_after, second.params_before)
    assert reports(pruned) == [first]  # the intermediate model keeps its own history
    assert "| parameters |" in second.to_markdown() and second.to_dict()["size_ratio"] > 3


def test_a_flop_count_before_the_first_call_does_not_leave_the_model_eager() -> None:
    """Lightning's model summary counts FLOPs under a TorchDispatchMode before training; torch 2.11's
    dynamo skipped a frame first seen under one for good, so optimize.compile ran eager there."""
    from torch._dynamo.utils import counters
    from torch.utils.flop_counter import FlopCounterMode

    counters.clear()
    compiled = perfkit.compile(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), backend="eager")
    x = torch.ones(2, 4)
    with FlopCounterMode(display=False), torch.no_grad():
        compiled(x)  # runs eager: no frame is traced under the mode
    assert not counters["stats"]["unique_graphs"]
    compiled(x)
    assert counters["stats"]["unique_graphs"] == 1


def test_channel_pruning_that_removes_nothing_says_so() -> None:
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    with pytest.warns(
        UserWarning, match="nothing removed: amount=0.99 would leave layers with less than one"
    ):
        pruned = prune(model, method="channels", amount=0.99, example_inputs=torch.randn(2, 8))
    (report,) = reports(pruned)
    assert not report.changed and report.notes[0].startswith("nothing removed")
    assert not any("smaller and faster" in note for note in report.notes)


@pytest.mark.parametrize(
    ("transform", "kwargs"),
    [
        (quantize, {}),
        (prune, {"amount": 0.5}),
        (prune, {"amount": 0.5, "method": "channels", "example_inputs": torch.randn(2, 8)}),
        (compile, {}),
    ],
)
def test_a_model_on_the_meta_device_is_one_line(transform: Callable[..., nn.Module], kwargs: dict) -> None:
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    with pytest.raises(ValueError, match=r"weights are on the meta device \(0.weight and others\).*to_empty"):
        transform(model, **kwargs)


@pytest.mark.parametrize(("module", "datamodule"), [("model", "data"), (TinyMLP(), "data")])
def test_tune_names_what_it_takes(module: object, datamodule: object) -> None:
    with pytest.raises(TypeError, match=r"perfkit\.tune takes a Lightning(Data)?Module instance"):
        perfkit.tune(module, datamodule)

"""perfkit.compile: eager numbers, eager weights, and a fallback to eager that says why."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import perfkit
from perfkit.optim import CompiledModule, compile, reports
from tests.helpers.checks import assert_untouched, round_trip, snapshot
from tests.helpers.toy_models import TinyConvNet, TinyMLP


def test_compile_matches_eager_and_leaves_the_input_alone() -> None:
    model = TinyConvNet().eval()
    before = snapshot(model)
    compiled = compile(model)
    x = TinyConvNet.example_inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback
        got = compiled(x)
    torch.testing.assert_close(got, model(x), rtol=1e-4, atol=1e-5)
    assert compiled.fallback_reason is None
    assert_untouched(model, before)
    assert reports(compiled)[-1].transform == "compile(mode=default, backend=inductor)"


def test_compiled_weights_round_trip_into_the_eager_model() -> None:
    model = TinyMLP()
    compiled = compile(model, backend="eager")
    assert list(compiled.state_dict()) == list(model.state_dict())  # no prefix
    fresh = TinyMLP()
    fresh.load_state_dict(compiled.state_dict())
    x = TinyMLP.example_inputs()
    torch.testing.assert_close(fresh(x), compiled(x))
    assert isinstance(round_trip(compiled), CompiledModule)


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


@pytest.mark.hostile
def test_a_compile_that_fell_back_says_so_in_its_report() -> None:
    class Breaks(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            torch._dynamo.graph_break()
            return x + 1

    compiled = perfkit.compile(Breaks(), backend="eager", fullgraph=True)
    with pytest.warns(UserWarning, match="running eager instead"):
        assert torch.equal(compiled(torch.zeros(2)), torch.ones(2))
    notes = perfkit.optim.reports(compiled)[-1].notes
    assert notes and notes[0].startswith("torch.compile failed at the first call; this model runs eager")

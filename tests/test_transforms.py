"""perfkit.optim as one API: the verbs compose, their reports accumulate, a library mistake is one
clear exception."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import perfkit
from perfkit.models import MLP
from perfkit.optim import compile, prune, quantize, reports
from tests.helpers.toy_models import TinyMLP

DIGIT = (1, 28, 28)


def test_top_level_names_are_the_transforms() -> None:
    assert perfkit.compile is compile and perfkit.prune is prune and perfkit.quantize is quantize


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


# --- models nobody here wrote, and wrong arguments to the library ----------------------------------
class _Mlp(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))


LIBRARY_MISTAKES: list[Any] = [
    pytest.param(
        lambda: perfkit.quantize("not a model"),
        TypeError,
        "takes a torch.nn.Module, not str",
        id="quantize-str",
    ),
    pytest.param(lambda: perfkit.quantize(None), TypeError, "not NoneType", id="quantize-none"),
    pytest.param(
        lambda: perfkit.quantize(_Mlp(), scheme="int4"),
        ValueError,
        "unknown quantization scheme",
        id="q-scheme",
    ),
    pytest.param(
        lambda: perfkit.quantize(_Mlp(), backend="tensorrt"),
        ValueError,
        "unknown quantization backend",
        id="q-backend",
    ),
    pytest.param(
        lambda: perfkit.quantize(_Mlp(), example_inputs=torch.zeros(1, 3)),
        ValueError,
        "cannot run on example_inputs",
        id="quantize-wrong-example",
    ),
    pytest.param(
        lambda: perfkit.compile(42), TypeError, "takes a torch.nn.Module, not int", id="compile-int"
    ),
    pytest.param(lambda: perfkit.compile(lambda x: x), TypeError, "not function", id="compile-function"),
    pytest.param(
        lambda: perfkit.compile(_Mlp(), mode="ludicrous"), ValueError, "unknown compile mode", id="c-mode"
    ),
    pytest.param(
        lambda: perfkit.compile(_Mlp(), backend="nope"), ValueError, "unknown compile backend", id="c-backend"
    ),
    pytest.param(
        lambda: perfkit.compile(_Mlp(), dynamic="yes"), ValueError, "dynamic must be", id="c-dynamic"
    ),
    pytest.param(
        lambda: perfkit.prune("x", amount=0.5), TypeError, "takes a torch.nn.Module", id="prune-str"
    ),
    pytest.param(lambda: perfkit.prune(_Mlp(), amount=1.5), ValueError, "amount must be", id="prune-amount"),
    pytest.param(
        lambda: perfkit.prune(_Mlp(), amount=-0.1), ValueError, "amount must be", id="prune-negative"
    ),
    pytest.param(lambda: perfkit.prune(_Mlp(), amount="half"), ValueError, "amount must be", id="prune-text"),
    pytest.param(lambda: perfkit.prune(_Mlp(), amount=True), ValueError, "amount must be", id="prune-bool"),
    pytest.param(
        lambda: perfkit.prune(_Mlp(), amount=0.5, method="magic"),
        ValueError,
        "unknown pruning method",
        id="p-method",
    ),
    pytest.param(
        lambda: perfkit.prune(_Mlp(), amount=0.5, method="channels"),
        ValueError,
        "needs example_inputs",
        id="p-no-example",
    ),
    pytest.param(
        lambda: perfkit.prune(_Mlp(), amount=0.5, method="channels", example_inputs=torch.zeros(1, 3)),
        ValueError,
        "cannot run on example_inputs",
        id="prune-wrong-shape",
    ),
    pytest.param(
        lambda: perfkit.prune(_Mlp(), amount=0.5, method="channels", example_inputs="abc"),
        ValueError,
        "cannot run on example_inputs",
        id="prune-wrong-type",
    ),
    pytest.param(
        lambda: perfkit.prune(nn.ReLU(), amount=0.5), ValueError, "nothing to prune", id="prune-nothing"
    ),
    pytest.param(
        lambda: perfkit.benchmark("m", torch.zeros(1)),
        TypeError,
        "mapping of names to models",
        id="bench-str",
    ),
    pytest.param(
        lambda: perfkit.benchmark({}, torch.zeros(1)),
        TypeError,
        "mapping of names to models",
        id="bench-empty",
    ),
    pytest.param(
        lambda: perfkit.benchmark({"a": 42}, torch.zeros(1)),
        TypeError,
        "variant 'a' is a int",
        id="bench-int",
    ),
]


@pytest.mark.hostile
@pytest.mark.parametrize(("call", "error", "message"), LIBRARY_MISTAKES)
def test_a_library_mistake_is_one_clear_exception(call: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message) as raised:
        call()
    assert len(str(raised.value).splitlines()) == 1

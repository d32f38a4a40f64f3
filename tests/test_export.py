"""perfkit.export: artifacts a serving stack loads, checked against eager, loadable without perfkit."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import perfkit
from perfkit.optim.exporting import export_checked, load
from tests.helpers.toy_models import TOY_MODELS


class TwoInputs(nn.Module):
    """Two inputs (image and side features), a dict-free tuple of outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.side = nn.Linear(3, 4)

    def forward(self, image: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.conv(image).mean(dim=(2, 3))
        return pooled + self.side(features), pooled


class ValueBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.linear(x)
        return x


@pytest.mark.parametrize("name", sorted(TOY_MODELS))
def test_onnx_artifact_matches_eager_at_any_batch_size(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TOY_MODELS[name]()
    example = model.example_inputs()
    path, result = export_checked(model, example, format="onnx", path=tmp_path / f"{name}.onnx")
    assert path == tmp_path / f"{name}.onnx" and path.stat().st_size == result.size_bytes > 0
    assert result.max_abs_diff_relative < 1e-4 and result.argmax_agreement == 1.0
    artifact = load(path)
    for batch in (1, 3, 33):  # none of them the example's
        inputs = torch.cat([example] * 5)[:batch]
        torch.testing.assert_close(artifact(inputs), model.eval()(inputs), rtol=1e-4, atol=1e-4)
    assert f"## {name}.onnx (onnx)" in (tmp_path / "serve.md").read_text()


def test_several_inputs_and_outputs_and_a_batch_of_one(tmp_path: Path) -> None:
    """A batch-1 example still gives a dynamic batch (torch.export would otherwise bake in 1)."""
    model = TwoInputs()
    path = perfkit.export(model, (torch.randn(1, 1, 8, 8), torch.randn(1, 3)), path=tmp_path / "two.onnx")
    inputs = (torch.randn(6, 1, 8, 8), torch.randn(6, 3))
    for got, want in zip(load(path)(*inputs), model(*inputs), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert "`input_0`" in (tmp_path / "serve.md").read_text()


def test_value_dependent_control_flow_is_one_line_naming_the_source_line(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"the previous artifact")
    with pytest.raises(perfkit.ExportError) as caught:
        perfkit.export(ValueBranch(), torch.randn(3, 4), path=target)
    message = str(caught.value)
    assert "\n" not in message
    assert "test_export.py" in message and "if x.sum() > 0" in message and "torch.where" in message
    assert target.read_bytes() == b"the previous artifact"  # a failed export replaces nothing
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"format": "tflite"}, "allowed: aoti, onnx"),
        ({"format": "onnx", "path": "model.pt2"}, r"ends in \.onnx"),
    ],
)
def test_wrong_options_say_what_is_allowed(kwargs: dict[str, str], message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        perfkit.export(TOY_MODELS["mlp"](), torch.randn(2, 32), **kwargs)


def test_inputs_must_be_batched_tensors() -> None:
    with pytest.raises(ValueError, match="tensor or a tuple of tensors"):
        perfkit.export(TOY_MODELS["mlp"](), {"x": torch.randn(2, 32)})
    with pytest.raises(ValueError, match="batch dimension"):
        perfkit.export(TOY_MODELS["mlp"](), torch.tensor(1.0))


# the artifact's loader in a fresh interpreter: -I ignores the project on sys.path, and importing
# perfkit or the tests' model code raises, so the artifact can only work on its own
_FRESH = """
import sys, importlib.abc
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("perfkit", "tests"):
            raise ImportError("refused: " + name)
sys.meta_path.insert(0, Refuse())
import numpy as np
inputs = np.load(sys.argv[2])
{load}
np.save(sys.argv[3], outputs)
"""
_ONNX_LOAD = """
import onnxruntime as ort
outputs = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"]).run(None, {"input": inputs})[0]
assert "torch" not in sys.modules
"""
_AOTI_LOAD = """
import torch
outputs = torch._inductor.aoti_load_package(sys.argv[1])(torch.from_numpy(inputs)).numpy()
"""


def _run_fresh(loader: str, artifact: Path, inputs: torch.Tensor, tmp_path: Path) -> torch.Tensor:
    import numpy as np

    np.save(tmp_path / "inputs.npy", inputs.numpy())
    script = tmp_path / "serve.py"
    script.write_text(_FRESH.format(load=textwrap.dedent(loader)))
    done = subprocess.run(
        [
            sys.executable,
            "-I",
            str(script),
            str(artifact),
            str(tmp_path / "inputs.npy"),
            str(tmp_path / "out.npy"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return torch.from_numpy(np.load(tmp_path / "out.npy"))


def test_onnx_artifact_serves_in_a_fresh_interpreter_without_perfkit_or_torch(tmp_path: Path) -> None:
    model = TOY_MODELS["conv"]()
    artifact = perfkit.export(model, model.example_inputs(), path=tmp_path / "conv.onnx")
    inputs = torch.randn(5, 3, 12, 12)
    got = _run_fresh(_ONNX_LOAD, artifact, inputs, tmp_path)
    torch.testing.assert_close(got, model.eval()(inputs).detach(), rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # AOTInductor compiles C++: ~40 s on 2 cores
def test_aoti_package_serves_in_a_fresh_interpreter_without_perfkit(tmp_path: Path) -> None:
    model = TOY_MODELS["mlp"]()
    path, result = export_checked(model, model.example_inputs(), format="aoti", path=tmp_path / "mlp.pt2")
    assert result.max_abs_diff_relative < 1e-4
    inputs = torch.randn(3, 32)
    got = _run_fresh(_AOTI_LOAD, path, inputs, tmp_path)
    torch.testing.assert_close(got, model.eval()(inputs).detach(), rtol=1e-4, atol=1e-5)
    assert 'aoti_load_package("mlp.pt2")' in (tmp_path / "serve.md").read_text()


def test_onnx_int8_formats_are_smaller_close_and_say_their_calibration(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TOY_MODELS["conv"]()
    example = model.example_inputs()
    float_path = perfkit.export(model, example, path=tmp_path / "float.onnx")
    dynamic, dyn = export_checked(model, example, format="onnx_int8", path=tmp_path / "dyn.onnx")
    calibration = [torch.randn(4, *example.shape[1:]) for _ in range(3)]
    static, stat = export_checked(
        model, example, format="onnx_int8_static", path=tmp_path / "static.onnx", calibration=calibration
    )
    assert dyn.calibration_batches == 0 and stat.calibration_batches == 3
    for path, result in ((dynamic, dyn), (static, stat)):
        assert result.max_abs_diff_relative < 0.25
        assert path.stat().st_size < float_path.stat().st_size
    x = torch.randn(7, *example.shape[1:])
    assert load(static)(x).shape == model.eval()(x).shape
    # the float model ONNX Runtime quantized is not left behind
    assert sorted(p.name for p in tmp_path.glob("*.onnx")) == ["dyn.onnx", "float.onnx", "static.onnx"]

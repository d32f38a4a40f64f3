"""Exported artifacts loaded back with their own runtime (ONNX Runtime, AOTInductor's loader) as
modules, checked against the eager model at two batch sizes, and the ``serve.md`` that shows how
to load one without perfkit."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from perfkit.errors import first_line
from perfkit.measure import output_drift

FORMATS = ("aoti", "onnx", "onnx_int8", "onnx_int8_static")  # schemas.ExportFormat


SUFFIXES = {"aoti": ".pt2", "onnx": ".onnx", "onnx_int8": ".onnx", "onnx_int8_static": ".onnx"}


FILE_NAMES = {
    "aoti": "model.pt2",
    "onnx": "model.onnx",
    "onnx_int8": "model_int8.onnx",
    "onnx_int8_static": "model_int8_static.onnx",
}


# an artifact whose outputs differ from eager by more than this share of their range is refused: float
# formats must compute the same function; int8 ones are judged on held-out data, this only catches a
# broken quantization
TOLERANCE = 1e-3


class ExportError(ValueError):
    """The model cannot be exported in this format: one line naming why (the op, or the source line)."""


class LoadedArtifact(nn.Module):
    """An exported artifact behind the ``nn.Module`` call interface, so a LightningModule's own
    steps (or a benchmark) can call it in place of the network it was exported from."""

    def __init__(self, path: str | os.PathLike[str], call: Callable[..., Any]) -> None:
        super().__init__()
        self.path = str(path)
        self._call = call
        self.source_parameters: int | None = None  # the exported network's, where the caller knows them

    @property
    def size_bytes(self) -> int:
        return Path(self.path).stat().st_size

    def forward(self, *inputs: torch.Tensor) -> Any:
        return self._call(*inputs)


def load(
    path: str | os.PathLike[str], *, device: str | torch.device = "cpu", threads: int | None = None
) -> LoadedArtifact:
    """Load an artifact :func:`export` wrote with its own runtime (AOTInductor or ONNX Runtime).
    ``threads``: ONNX Runtime's intra-op threads (default: torch's); AOTInductor follows torch's."""
    path = Path(path)
    kind = {".pt2": "aoti", ".onnx": "onnx"}.get(path.suffix)
    if kind == "aoti":
        runner = torch._inductor.aoti_load_package(str(path))
        return LoadedArtifact(path, lambda *xs: _single(runner(*xs)))
    if kind == "onnx":
        return LoadedArtifact(path, _onnx_runner(path, torch.device(device), threads))
    raise ValueError(f"{path.name}: not an artifact perfkit.export writes (.pt2 or .onnx)")


def _single(outputs: Any) -> Any:
    return outputs[0] if isinstance(outputs, list | tuple) and len(outputs) == 1 else outputs


def _onnx_runner(path: Path, device: torch.device, threads: int | None) -> Callable[..., Any]:
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    # idle ONNX Runtime threads spin by default, taking the cores from whatever runs next: in an
    # interleaved benchmark that is the other candidates
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=providers)
    names = [i.name for i in session.get_inputs()]

    def run(*inputs: torch.Tensor) -> Any:
        feed = {n: t.detach().cpu().numpy() for n, t in zip(names, inputs, strict=True)}
        outputs = [torch.from_numpy(o).to(inputs[0].device) for o in session.run(None, feed)]
        return _single(outputs)

    return run


def check(
    model: nn.Module, artifact: nn.Module, inputs: tuple[torch.Tensor, ...], *, tolerance: float, name: str
) -> dict[str, Any]:
    """Run ``artifact`` and ``model`` on ``inputs`` and on a batch of another size; raise
    :class:`ExportError` if the outputs differ by more than ``tolerance`` of their range."""
    other = tuple(torch.cat([t, t[:1]]) for t in inputs)  # one row more: the batch is not baked in
    worst, agreement = 0.0, None
    with torch.inference_mode():
        for batch in (inputs, other):
            try:
                got = artifact(*batch)
            except Exception as error:
                raise ExportError(
                    f"the {name} fails at batch size {len(batch[0])}: "
                    f"{first_line(error, limit=300, typed=True)}"
                ) from None
            drift = output_drift(model(*batch), got, classes=True)
            if not drift:
                raise ExportError(f"the {name}'s outputs do not have the eager model's shapes")
            if drift.get("non_finite"):
                raise ExportError(f"the {name}'s outputs hold NaN or inf where the eager model's do not")
            worst = max(worst, drift["max_abs_diff_relative"])
            if "argmax_agreement" in drift:
                agreement = min(drift["argmax_agreement"], agreement if agreement is not None else 1.0)
    if worst > tolerance:
        raise ExportError(
            f"the {name}'s outputs differ from the eager model's by {worst:.2%} of their range "
            f"(allowed: {tolerance:.2%})"
        )
    return {
        "batch_sizes": (len(inputs[0]), len(other[0])),
        "max_abs_diff_relative": worst,
        "argmax_agreement": agreement,
    }


_LOADERS = {
    "aoti": """```python
import torch  # torch only: neither perfkit nor the model's code

model = torch._inductor.aoti_load_package("{name}")
outputs = model({args})  # any batch size from 1 to {max_batch}
```""",
    "onnx": """```python
import numpy as np
import onnxruntime as ort  # no torch needed

session = ort.InferenceSession("{name}", providers=["CPUExecutionProvider"])
outputs = session.run(None, {{{feed}}})  # any batch size from 1 to {max_batch}
```""",
}


def write_serving_notes(artifact: Path, format: str, inputs: tuple[torch.Tensor, ...]) -> Path:
    """Add (or replace) the artifact's section in ``serve.md`` beside it; other sections stay."""
    notes = artifact.parent / "serve.md"
    names = input_names(len(inputs))
    shapes = ", ".join(
        f"`{n}`: {t.dtype} [batch, {', '.join(map(str, t.shape[1:]))}]"
        for n, t in zip(names, inputs, strict=True)
    )
    args = ", ".join(f"torch.zeros(8, {', '.join(map(str, t.shape[1:]))}, dtype={t.dtype})" for t in inputs)
    feed = ", ".join(
        f'"{n}": np.zeros((8, {", ".join(map(str, t.shape[1:]))}), dtype=np.{str(t.dtype).removeprefix("torch.")})'
        for n, t in zip(names, inputs, strict=True)
    )
    code = _LOADERS[SUFFIXES[format].lstrip(".").replace("pt2", "aoti")].format(
        name=artifact.name, args=args, feed=feed, max_batch=BATCH_MAX
    )
    marker = f"<!-- {artifact.name} -->"
    section = f"{marker}\n## {artifact.name} ({format})\n\nInputs: {shapes}.\n\n{code}\n{marker}\n"
    text = notes.read_text() if notes.exists() else "# Serving the exported model\n"
    pattern = re.compile(re.escape(marker) + r".*?" + re.escape(marker) + r"\n", re.S)
    text = pattern.sub(lambda _: section, text) if marker in text else text + "\n" + section
    notes.write_text(text)
    return notes


BATCH_MAX = 1 << 16  # the dynamic batch dimension's upper bound


def input_names(count: int) -> list[str]:
    return ["input"] if count == 1 else [f"input_{i}" for i in range(count)]

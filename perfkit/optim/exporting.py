"""Export a model to an artifact a serving stack loads, checked against the eager model.

Both formats start from one ``torch.export`` program whose batch dimension (dim 0 of every input) is
dynamic:

- ``aoti``: an AOTInductor package (``.pt2``), compiled ahead of time to native code; it loads with
  ``torch._inductor.aoti_load_package`` in any process that has torch, not perfkit or the model's code.
- ``onnx``: ``torch.onnx.export(..., dynamo=True)``; ONNX Runtime runs it (no torch needed at all).
- ``onnx_int8``: that ONNX model with ONNX Runtime's dynamic int8 quantization (MatMul/Gemm weights
  int8, activations quantized per call): for Linear-heavy models.
- ``onnx_int8_static``: ONNX Runtime's static int8 in QDQ form (convolutions too), its activation
  ranges calibrated on ``calibration`` batches: for conv nets.

Every artifact is loaded back with its own runtime and compared with the eager model on the example
inputs and on a batch of another size (so the dynamic batch is known to work). A ``serve.md`` beside
it shows how to load and call it.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from perfkit.errors import first_line
from perfkit.measure import output_drift
from perfkit.optim.report import require_module

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
INT8_TOLERANCE = 0.25
_CALIBRATION_BATCHES = 16
_BATCH_MAX = 1 << 16


class ExportError(ValueError):
    """The model cannot be exported in this format: one line naming why (the op, or the source line)."""


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export` wrote and how its outputs compared with the eager model's."""

    format: str
    path: str
    size_bytes: int
    export_s: float
    calibration_batches: int  # batches the static int8 ranges were set on (the example alone by default)
    batch_sizes: tuple[int, ...]  # the batch sizes the artifact was run and checked at
    max_abs_diff_relative: float  # largest |artifact - eager| over the eager outputs' largest |value|
    argmax_agreement: float | None  # for N x C outputs: share of rows whose argmax agrees

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def export(
    model: nn.Module,
    example_inputs: Any,
    *,
    format: str = "onnx",
    path: str | os.PathLike[str] | None = None,
    tolerance: float | None = None,
    calibration: Iterable[Any] | None = None,
) -> Path:
    """Export ``model`` (in eval mode; left untouched) and return the artifact's path.

    ``example_inputs``: a tensor or a tuple of tensors, called as ``model(*example_inputs)``; dim 0
    of each is the batch and stays dynamic in the artifact. ``format``: ``onnx``, ``aoti``,
    ``onnx_int8`` or ``onnx_int8_static``. ``path`` defaults to ``FILE_NAMES[format]``; an existing
    file there is replaced only once the new artifact has passed its check (outputs within
    ``tolerance`` of their range: 0.1% for float formats, 25% for int8 ones, whose accuracy is for
    held-out data to judge). ``calibration``: input batches (like ``example_inputs``) that set the
    static int8 ranges, by default ``example_inputs`` alone. An :class:`ExportError` says in one line
    why a model cannot be exported.
    """
    return export_checked(
        model, example_inputs, format=format, path=path, tolerance=tolerance, calibration=calibration
    )[0]


def export_checked(
    model: nn.Module,
    example_inputs: Any,
    *,
    format: str = "onnx",
    path: str | os.PathLike[str] | None = None,
    tolerance: float | None = None,
    calibration: Iterable[Any] | None = None,
) -> tuple[Path, ExportResult]:
    """:func:`export`, also returning the check's figures."""
    require_module(model, "perfkit.export")
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; allowed: {', '.join(FORMATS)}")
    inputs = _tensor_inputs(example_inputs)
    if tolerance is None:
        tolerance = INT8_TOLERANCE if "int8" in format else TOLERANCE
    batches = [inputs] if calibration is None else [_tensor_inputs(b) for b in calibration]
    target = Path(path) if path is not None else Path(FILE_NAMES[format])
    if target.suffix != SUFFIXES[format]:
        raise ValueError(f"an {format} artifact's file name ends in {SUFFIXES[format]}, not {target.name!r}")
    target.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).eval()
    started = time.perf_counter()
    program = _program(model, inputs)
    partial = target.with_name(f".partial-{target.name}")  # AOTInductor wants the suffix
    try:
        _write(format, program, inputs, partial, batches[:_CALIBRATION_BATCHES])
        elapsed = time.perf_counter() - started
        checked = check(model, load(partial), inputs, tolerance=tolerance, name=f"{format} artifact")
        os.replace(partial, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    result = ExportResult(
        format,
        str(target),
        target.stat().st_size,
        round(elapsed, 3),
        len(batches) if format == "onnx_int8_static" else 0,
        **checked,
    )
    write_serving_notes(target, format, inputs)
    return target, result


def _tensor_inputs(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    inputs = example_inputs if isinstance(example_inputs, tuple | list) else (example_inputs,)
    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        kinds = ", ".join(type(t).__name__ for t in inputs) or "nothing"
        raise ValueError(
            f"perfkit.export: example_inputs must be a tensor or a tuple of tensors (got {kinds})"
        )
    if any(t.dim() == 0 for t in inputs):
        raise ValueError("perfkit.export: every example input needs a batch dimension (dim 0); got a scalar")
    # torch.export specialises a dimension of size 1: two rows let the batch stay dynamic
    return tuple(t.detach().repeat(2, *([1] * (t.dim() - 1))) if len(t) == 1 else t.detach() for t in inputs)


def _program(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1, max=_BATCH_MAX)
    try:
        with _quiet_export_logs():
            return torch.export.export(model, inputs, dynamic_shapes=tuple({0: batch} for _ in inputs))
    except Exception as error:
        raise ExportError(export_failure(error)) from None


def _write(
    format: str,
    program: torch.export.ExportedProgram,
    inputs: tuple[Any, ...],
    path: Path,
    calibration: list[tuple[torch.Tensor, ...]],
) -> None:
    try:
        if format == "aoti":
            torch._inductor.aoti_compile_and_package(program, package_path=str(path))
            return
        with _quiet_export_logs():
            onnx = torch.onnx.export(program, inputs, dynamo=True, input_names=_input_names(len(inputs)))
        if onnx is None:
            raise ExportError("torch.onnx.export returned no program")
        onnx.save(str(path))
        if format in ("onnx_int8", "onnx_int8_static"):
            _quantize_onnx(path, static=format == "onnx_int8_static", calibration=calibration)
    except ImportError as error:
        raise ExportError(
            f"the {format} export needs {error.name or 'a missing package'}: pip install onnx onnxscript onnxruntime"
        ) from None
    except ExportError:
        raise
    except Exception as error:
        raise ExportError(f"{format}: {export_failure(error)}") from None


def _quantize_onnx(path: Path, *, static: bool, calibration: list[tuple[torch.Tensor, ...]]) -> None:
    """Replace the float ONNX model at ``path`` by ONNX Runtime's int8 version of it."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    float_model = path.with_name(f".float-{path.name}")
    os.replace(path, float_model)
    try:
        with _quiet_export_logs():
            if not static:
                quantize_dynamic(str(float_model), str(path), weight_type=QuantType.QInt8)
                return
            # shape inference and constant folding first, as ONNX Runtime advises for static int8
            quant_pre_process(str(float_model), str(float_model))
            names = _input_names(len(calibration[0]))
            feeds = iter(
                [{n: t.detach().cpu().numpy() for n, t in zip(names, b, strict=True)} for b in calibration]
            )

            class Batches(CalibrationDataReader):
                def get_next(self) -> dict[str, Any] | None:
                    return next(feeds, None)

            quantize_static(
                str(float_model),
                str(path),
                Batches(),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
            )
    finally:
        with contextlib.suppress(FileNotFoundError):
            float_model.unlink()


def _input_names(count: int) -> list[str]:
    return ["input"] if count == 1 else [f"input_{i}" for i in range(count)]


@contextlib.contextmanager
def _quiet_export_logs() -> Iterator[None]:
    """torch.export prints graph dumps to stderr on a failure, torch.onnx its progress to stdout: the
    one-line error says what matters."""
    import io
    import logging

    # ONNX Runtime's quantizer advises through the root logger
    loggers = [logging.getLogger("torch.fx.experimental.symbolic_shapes"), logging.getLogger()]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


_USER_LINE = re.compile(r'File "([^"]+)", line (\d+), in (\S+)\n\s*(.+)')
_OPERATOR = re.compile(r"(aten::\w+(?:\.\w+)?|aten\.\w+(?:\.\w+)?)")


def export_failure(error: BaseException) -> str:
    """One line: what stopped the export, where in the model's source (the last frame the exporter
    names outside torch) or which operator, and what to try."""
    text = str(error)
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    frames = [m for m in _USER_LINE.finditer(text) if "/torch/" not in m.group(1)]
    where = ""
    if frames:
        file, line, function, code = frames[-1].groups()
        where = f" at {Path(file).name}:{line} in {function} ({code.strip()})"
    elif op := _OPERATOR.search(text):
        where = f" (operator {op.group(1)})"
    hint = (
        "control flow that depends on tensor values cannot be exported: compute both branches with "
        "torch.where, or move the decision out of forward"
        if "data-dependent" in text or "GuardOnDataDependent" in type(error).__name__
        else "another format, or eager/compile, may still serve this model"
    )
    return f"cannot export the model{where}: {type(error).__name__}: {first[:300]}; {hint}"


# --- loading and checking ---------------------------------------------------------------------


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


# --- serve.md -----------------------------------------------------------------------------------

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
    names = _input_names(len(inputs))
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
        name=artifact.name, args=args, feed=feed, max_batch=_BATCH_MAX
    )
    marker = f"<!-- {artifact.name} -->"
    section = f"{marker}\n## {artifact.name} ({format})\n\nInputs: {shapes}.\n\n{code}\n{marker}\n"
    text = notes.read_text() if notes.exists() else "# Serving the exported model\n"
    pattern = re.compile(re.escape(marker) + r".*?" + re.escape(marker) + r"\n", re.S)
    text = pattern.sub(lambda _: section, text) if marker in text else text + "\n" + section
    notes.write_text(text)
    return notes

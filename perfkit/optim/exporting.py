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
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from perfkit.optim.artifacts import (
    BATCH_MAX,
    FILE_NAMES,
    FORMATS,
    SUFFIXES,
    TOLERANCE,
    ExportError,
    check,
    input_names,
    load,
    write_serving_notes,
)
from perfkit.optim.report import require_module

# loading and checking live in perfkit.optim.artifacts; these names stay importable from here
__all__ = [
    "FILE_NAMES",
    "FORMATS",
    "ExportError",
    "ExportResult",
    "export",
    "export_checked",
    "export_failure",
    "load",
]

INT8_TOLERANCE = 0.25


_CALIBRATION_BATCHES = 16


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
    batch = torch.export.Dim("batch", min=1, max=BATCH_MAX)
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
            onnx = torch.onnx.export(program, inputs, dynamo=True, input_names=input_names(len(inputs)))
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
            names = input_names(len(calibration[0]))
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

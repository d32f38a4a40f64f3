"""int8 quantization for CPU inference: int8 weights, activations int8 per call (``int8_dynamic``) or
float (``int8_weight_only``).

Two libraries do it, and which one is faster depends on the CPU (VNNI or not), the model and whether
it runs compiled: on one AVX-512/VNNI host torch.ao's dynamic int8 ran a 784-512-256-10 MLP 4.7x fp32
eager while torchao's ran it 0.67x eager and 1.1x compiled; a 3xLinear(1024) MLP on the same host ran
6.0x with torchao compiled. So ``backend="auto"`` times both on the caller's ``example_inputs`` (as the
caller will run the result: eager, or compiled when ``compiled=True``) and keeps the faster; the
report records what it measured, on which CPU.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import types
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from perfkit.errors import first_line
from perfkit.measure import output_drift, time_interleaved
from perfkit.optim.compiling import CompiledModule
from perfkit.optim.pruning import check_example_inputs
from perfkit.optim.report import attach, measure, replaced_layers, require_module
from perfkit.schemas import QuantizeBackend, QuantizeScheme, choices
from perfkit.system import cpu_description

SCHEMES = choices(QuantizeScheme)
BACKENDS = choices(QuantizeBackend)
_TORCHAO_CONFIGS = {
    "int8_dynamic": "Int8DynamicActivationInt8WeightConfig",
    "int8_weight_only": "Int8WeightOnlyConfig",
}
_CHOICE_ROUNDS = 10
# layer types torch.ao's dynamic quantization replaces
_TORCH_AO_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.LSTM,
    nn.GRU,
    nn.LSTMCell,
    nn.GRUCell,
    nn.RNNCell,
)


def quantize(
    model: nn.Module,
    *,
    scheme: str = "int8_dynamic",
    backend: str = "auto",
    example_inputs: Any = None,
    compiled: bool = False,
    calibration: Iterable[Any] | None = None,
) -> nn.Module:
    """A quantized copy of ``model`` (left untouched), for CPU inference.

    ``int8_dynamic`` quantizes the weights of Linear layers (and LSTM/GRU with torch.ao) to int8;
    activations are quantized per batch at run time. ``int8_weight_only`` (torchao) keeps activations
    in float. Other layers (Conv, norms) stay in fp32; a model with nothing quantizable is returned
    unchanged, with a warning naming its layer types. The feed-forward Linears of
    ``nn.TransformerEncoderLayer`` stay in fp32 with torch.ao: torch's fused fast path reads their
    float weights directly and would fail on a quantized layer.

    ``backend``: ``torch_ao`` (its x86/fbgemm kernels), ``torchao`` (fast under ``torch.compile``), or
    ``auto``: both timed on ``example_inputs``, run as the caller will run the result (``compiled``:
    under ``perfkit.compile``), and the faster kept. Without ``example_inputs`` nothing can be timed,
    and ``auto`` takes torch.ao and says so in the report. With ``example_inputs`` the quantized model
    is also run on them; a ValueError says why if it fails.

    ``int8_static`` (torchao's pt2e flow with ``X86InductorQuantizer``: convolutions and Linear layers,
    activation ranges calibrated on ``calibration`` batches, else ``example_inputs``) returns a
    ``torch.export`` graph whose int8 kernels exist only under ``perfkit.compile``; models the flow
    cannot partition (torchvision's ResNet-18 on torch 2.14) get a ValueError naming ONNX Runtime's static int8
    (``perfkit.export(..., format="onnx_int8_static")``) as the alternative.
    """
    require_module(model, "perfkit.quantize")
    _check_options(scheme, backend, example_inputs)
    source = model
    model = copy.deepcopy(model).eval()
    if example_inputs is not None:  # a mistake in the inputs is the caller's, not a backend's
        check_example_inputs(model, example_inputs, f"perfkit.quantize({scheme})")
    chosen, choice = _choose_backend(backend, scheme, model, example_inputs, compiled)

    quantized, notes = _apply(model, chosen, scheme, example_inputs, calibration)
    if choice:
        notes.append(choice["note"])

    if example_inputs is not None:
        check_example_inputs(quantized, example_inputs, f"perfkit.quantize({scheme})")
        notes += _warn_drift(scheme, source, quantized, example_inputs)
    changed = replaced_layers(source, quantized)
    if not changed and chosen == "torch_ao" and "nothing to quantize" not in notes[0]:
        warnings.warn(
            f"quantize({scheme}): no layer could be quantized; the model is returned unchanged", stacklevel=2
        )
    report = measure(f"quantize(scheme={scheme}, backend={chosen})", source, quantized, changed, notes)
    report.measured = choice
    attach(quantized, source, report)
    return quantized


def _check_options(scheme: str, backend: str, example_inputs: Any) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {scheme!r}; allowed: {', '.join(SCHEMES)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown quantization backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    if scheme in ("int8_weight_only", "int8_static") and backend == "torch_ao":
        raise ValueError(f"{scheme} is torchao's: use backend='torchao' or 'auto'")
    if scheme == "int8_static" and example_inputs is None:
        raise ValueError(
            "int8_static calibrates activation ranges: pass example_inputs (and calibration=[...])"
        )


def _apply(
    model: nn.Module, chosen: str, scheme: str, example_inputs: Any, calibration: Iterable[Any] | None
) -> tuple[nn.Module, list[str]]:
    """``model`` quantized (in place where the library does so) by the chosen library, and the notes
    saying how."""
    if scheme == "int8_static":
        note = "torchao pt2e static int8 (X86InductorQuantizer): int8 kernels only under perfkit.compile"
        return _pt2e_static(model, example_inputs, calibration), [note]
    targets = _TORCH_AO_TYPES if chosen == "torch_ao" else (nn.Linear,)
    if not any(type(m) in targets for m in model.modules()):
        found = (
            ", ".join(sorted({type(m).__name__ for m in model.modules() if not list(m.children())})) or "none"
        )
        message = (
            f"quantize({scheme}): nothing to quantize, the model has no "
            f"{'/'.join(t.__name__ for t in targets)} layers (found: {found}); it is returned unchanged"
        )
        warnings.warn(message, stacklevel=3)
        return model, [message]
    if chosen == "torchao":
        note = f"torchao {_TORCHAO_CONFIGS[scheme]}: run it under perfkit.compile, where its kernels pay"
        return _torchao(model, scheme), [note]
    kept = _transformer_feed_forward(model)
    notes = ["torch.ao dynamic int8 (x86/fbgemm kernels): for CPU inference, not training"]
    if kept:
        notes.append(
            f"{len(kept)} Linear layer(s) of nn.TransformerEncoderLayer kept in fp32: torch's fused fast path "
            "reads their float weights"
        )
    return _torch_ao_dynamic(model, targets, kept), notes


def _choose_backend(
    backend: str, scheme: str, model: nn.Module, example_inputs: Any, compiled: bool
) -> tuple[str, dict[str, Any]]:
    """The one place the backend is decided, and the record of how: by name, or (``auto``) by timing
    each available library's model on ``example_inputs``."""
    if backend != "auto":
        return backend, {}
    if not any(type(m) in _TORCH_AO_TYPES for m in model.modules()):
        return "torch_ao", {}  # nothing to quantize, nothing to time: said by the caller
    if scheme in ("int8_weight_only", "int8_static"):
        return "torchao", {"note": f"backend=auto: {scheme} is torchao's alone"}
    if importlib.util.find_spec("torchao") is None:
        return "torch_ao", {
            "note": "backend=auto: torchao is not installed, so torch.ao (nothing to compare)"
        }
    if example_inputs is None:
        return "torch_ao", {
            "note": "backend=auto without example_inputs: nothing to time, torch.ao taken unmeasured "
            "(pass example_inputs to choose by measurement)"
        }
    return _time_backends(scheme, model, example_inputs, compiled)


def _time_backends(
    scheme: str, model: nn.Module, example_inputs: Any, compiled: bool
) -> tuple[str, dict[str, Any]]:

    args = tuple(
        t.cpu() if isinstance(t, torch.Tensor) else t
        for t in (example_inputs if isinstance(example_inputs, tuple) else (example_inputs,))
    )
    build = {
        "torch_ao": lambda m: _torch_ao_dynamic(m, _TORCH_AO_TYPES, _transformer_feed_forward(m)),
        "torchao": lambda m: _torchao(m, scheme),
    }
    runs: dict[str, Callable[[], Any]] = {}
    failed: dict[str, str] = {}
    for name, builder in build.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                candidate = builder(copy.deepcopy(model))
                runnable = CompiledModule(candidate) if compiled else candidate
                with torch.inference_mode():
                    runnable(*args)  # compiles here, outside the timed rounds
            runs[name] = lambda r=runnable: r(*args)  # type: ignore[misc]
        except Exception as error:
            failed[name] = first_line(error, limit=200, typed=True)
    if not runs:
        raise ValueError(f"quantize({scheme}): no backend runs this model ({failed})")
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        timings = time_interleaved(runs, rounds=_CHOICE_ROUNDS, warmup=1, calls_per_round=3)
    ms = {name: round(timing.median_ms, 4) for name, timing in timings.items()}
    chosen = min(ms, key=ms.__getitem__)
    cpu = cpu_description()
    how = "compiled" if compiled else "eager"
    rows = len(args[0]) if args and isinstance(args[0], torch.Tensor) and args[0].dim() else "?"
    timed = ", ".join(f"{name} {value:.3f} ms" for name, value in ms.items())
    note = (
        f"backend=auto chose {chosen}: timed {how} on example_inputs ({rows} rows, {torch.get_num_threads()} "
        f"threads, {_CHOICE_ROUNDS} interleaved rounds) on {cpu['cpu_model']} "
        f"({', '.join(cpu['cpu_simd']) or 'no AVX2'}): {timed} per call"
    )
    if failed:
        note += "; failed: " + "; ".join(f"{name} ({why})" for name, why in failed.items())
    return chosen, {"note": note, "median_ms": ms, "failed": failed, "run": how, **cpu}


def _transformer_feed_forward(model: nn.Module) -> set[str]:
    """Names of the Linear layers inside torch's Transformer encoder layers: their fused fast path
    reads the float weights. Decoder layers have no fast path: their Linears are quantized."""
    layers = (nn.TransformerEncoderLayer,)
    return {
        f"{name}.{child}" if name else child
        for name, module in model.named_modules()
        if isinstance(module, layers)
        for child, layer in module.named_children()
        if type(layer) is nn.Linear
    }


def _torch_ao_dynamic(
    model: nn.Module,
    targets: tuple[type[nn.Module], ...],
    kept: set[str] = frozenset(),  # type: ignore[assignment]
) -> nn.Module:
    engines = torch.backends.quantized.supported_engines
    if torch.backends.quantized.engine not in ("x86", "fbgemm") and "x86" in engines:
        torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated upstream but remains the fastest CPU path here
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*")
        if not kept:
            return torch.ao.quantization.quantize_dynamic(model, set(targets), dtype=torch.qint8)
        # a per-layer spec: every targeted layer except those kept in fp32
        qconfig = torch.ao.quantization.default_dynamic_qconfig
        spec = {
            name: qconfig
            for name, module in model.named_modules()
            if type(module) in targets and name not in kept
        }
        return torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8)


def _torchao(model: nn.Module, scheme: str) -> nn.Module:
    # torchao's import registers a pytree constant that torch warns about through its logger
    pytree = logging.getLogger("torch.utils._pytree")
    level = pytree.level
    pytree.setLevel(logging.ERROR)
    try:
        from torchao import quantization
    except ImportError:
        raise ValueError("backend='torchao' needs the torchao package: pip install torchao") from None
    finally:
        pytree.setLevel(level)
    config = getattr(quantization, _TORCHAO_CONFIGS[scheme])()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        quantization.quantize_(model, config)
    return model


def _pt2e_static(model: nn.Module, example_inputs: Any, calibration: Iterable[Any] | None) -> nn.Module:
    """torchao's pt2e flow: export with a dynamic batch, insert observers, run the calibration
    batches, convert to quantize/dequantize pairs around int8 ops (fused by inductor)."""
    try:
        from torchao.quantization.pt2e import move_exported_model_to_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86
    except ImportError:
        raise ValueError("int8_static needs torchao's pt2e flow: pip install torchao") from None
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    batches = [b if isinstance(b, tuple) else (b,) for b in (calibration or [args])]
    try:
        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        dynamic = tuple({0: batch} if isinstance(a, torch.Tensor) and a.dim() else None for a in args)
        graph = torch.export.export(model, args, dynamic_shapes=dynamic).module()
        quantizer = x86.X86InductorQuantizer()
        quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(graph, quantizer)
        with torch.no_grad():
            for calibration_batch in batches:
                prepared(*calibration_batch)
        converted = convert_pt2e(prepared)
    except Exception as error:
        raise ValueError(
            "quantize(int8_static): torchao's pt2e flow cannot quantize this model "
            f"({first_line(error, limit=200, typed=True)}); ONNX Runtime's static int8 may: perfkit.export(model, x, format='onnx_int8_static')"
        ) from None
    # an exported graph refuses .eval()/.train(), which perfkit and Lightning call; torchao's train
    # mode would rewrite its dropout: it stays an inference graph, whatever mode it is asked for
    move_exported_model_to_eval(converted)
    converted.train = types.MethodType(_inference_only, converted)
    converted.eval = types.MethodType(_inference_only, converted)
    return converted


def _inference_only(self: nn.Module, mode: bool = True) -> nn.Module:
    return self


def _warn_drift(scheme: str, source: nn.Module, quantized: nn.Module, example_inputs: Any) -> list[str]:
    drift = _drift(source, quantized, example_inputs)
    if drift:
        warnings.warn(f"quantize({scheme}): {drift}", stacklevel=3)
    return [drift] if drift else []


def _drift(source: nn.Module, quantized: nn.Module, example_inputs: Any) -> str:
    """Why the quantized outputs cannot be trusted on ``example_inputs`` (NaN, collapsed to zeros,
    or far from the float model's), or ""."""

    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    with torch.inference_mode():
        reference, output = source.eval()(*args), quantized(*args)
    drift = output_drift(reference, output)
    out = output[0] if isinstance(output, tuple | list) else output
    ref = reference[0] if isinstance(reference, tuple | list) else reference
    if drift.get("non_finite"):
        return "its outputs hold NaN or inf on example_inputs: do not use it"
    tensors = isinstance(out, torch.Tensor) and isinstance(ref, torch.Tensor)
    if tensors and not bool(out.any()) and bool(ref.any()):
        return "its outputs are all zeros on example_inputs where the float model's are not: do not use it"
    if drift.get("max_abs_diff_relative", 0.0) > 0.2:
        return (
            f"its outputs drift from the float model's by up to {drift['max_abs_diff_relative']:.0%} of their "
            "range on example_inputs: check its accuracy before using it"
        )
    return ""

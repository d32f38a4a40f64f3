"""int8 dynamic quantization: int8 weights, activations quantized on the fly per batch.

Backend choice (measured on this project's CPU, see FACTS.md and benchmarks/results/): torch.ao's
``quantize_dynamic`` with the x86/fbgemm engine runs Linear layers faster than fp32, while torchao's
``Int8DynamicActivationInt8WeightConfig`` ran ~20x slower on the same CPU (it targets GPUs). So
``backend="auto"`` means torch.ao on CPU; torchao is used when asked for by name.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn

from perfkit.optim.pruning import check_example_inputs
from perfkit.optim.report import attach, measure, replaced_layers, require_module
from perfkit.schemas import QuantizeBackend, QuantizeScheme, choices

SCHEMES = choices(QuantizeScheme)
BACKENDS = choices(QuantizeBackend)
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
    model: nn.Module, *, scheme: str = "int8_dynamic", backend: str = "auto", example_inputs: Any = None
) -> nn.Module:
    """A quantized copy of ``model`` (left untouched), for CPU inference.

    ``int8_dynamic`` quantizes the weights of Linear layers (and LSTM/GRU with torch.ao) to int8;
    activations are quantized per batch at run time. Other layers (Conv, norms) stay in fp32; a
    model with nothing quantizable is returned unchanged, with a warning naming its layer types.
    The feed-forward Linears of ``nn.TransformerEncoderLayer``/``DecoderLayer`` stay in fp32: torch's
    fused fast path reads their float weights directly and would fail on a quantized layer.
    With ``example_inputs`` the quantized model is run once on them; a ValueError says why if it fails.
    """
    require_module(model, "perfkit.quantize")
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {scheme!r}; allowed: {', '.join(SCHEMES)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown quantization backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    chosen = _choose_backend(backend)
    source = model
    model = copy.deepcopy(model).eval()

    targets = _TORCH_AO_TYPES if chosen == "torch_ao" else (nn.Linear,)
    notes: list[str] = []
    if not any(type(m) in targets for m in model.modules()):
        found = (
            ", ".join(sorted({type(m).__name__ for m in model.modules() if not list(m.children())})) or "none"
        )
        message = (
            f"quantize({scheme}): nothing to quantize, the model has no "
            f"{'/'.join(t.__name__ for t in targets)} layers (found: {found}); it is returned unchanged"
        )
        warnings.warn(message, stacklevel=2)
        notes.append(message)
        quantized = model
    elif chosen == "torch_ao":
        kept = _transformer_feed_forward(model)
        quantized = _torch_ao_dynamic(model, targets, kept)
        notes.append("torch.ao dynamic int8 (x86/fbgemm kernels): for CPU inference, not training")
        if kept:
            notes.append(
                f"{len(kept)} Linear layer(s) of nn.TransformerEncoderLayer kept in fp32: torch's fused fast path "
                "reads their float weights"
            )
    else:
        quantized = _torchao_dynamic(model)
        notes.append("torchao Int8DynamicActivationInt8Weight: aimed at CUDA; measured slow on CPU")

    if example_inputs is not None:
        check_example_inputs(quantized, example_inputs, f"perfkit.quantize({scheme})")
        notes += _warn_drift(scheme, source, quantized, example_inputs)
    changed = replaced_layers(source, quantized)
    if not changed and chosen == "torch_ao" and "nothing to quantize" not in notes[0]:
        warnings.warn(
            f"quantize({scheme}): no layer could be quantized; the model is returned unchanged", stacklevel=2
        )
    report = measure(f"quantize(scheme={scheme}, backend={chosen})", source, quantized, changed, notes)
    attach(quantized, source, report)
    return quantized


def _choose_backend(backend: str) -> str:
    """The one place the backend is decided: torch.ao unless torchao is asked for."""
    return "torch_ao" if backend == "auto" else backend


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


def _torchao_dynamic(model: nn.Module) -> nn.Module:
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError:
        raise ValueError("backend='torchao' needs the torchao package: pip install torchao") from None
    quantize_(model, Int8DynamicActivationInt8WeightConfig())
    return model


def _warn_drift(scheme: str, source: nn.Module, quantized: nn.Module, example_inputs: Any) -> list[str]:
    drift = _drift(source, quantized, example_inputs)
    if drift:
        warnings.warn(f"quantize({scheme}): {drift}", stacklevel=3)
    return [drift] if drift else []


def _drift(source: nn.Module, quantized: nn.Module, example_inputs: Any) -> str:
    """Why the quantized outputs cannot be trusted on ``example_inputs`` (NaN, collapsed to zeros,
    or far from the float model's), or ""."""
    from perfkit.measure import output_drift

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

"""The variant matrix: each optimization perfkit offers, built from one trained (or random) network.

A variant is a model plus how to run it. Every builder returns a new module and leaves its input
untouched, so all variants of a network can be timed side by side. A variant that cannot run on a
device, or cannot train, says why instead of producing a number.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from perfkit.optim import compile, prune, quantize
from perfkit.schemas import CLASSIC_VARIANTS, BenchMode, BenchModel, choices

MODELS = choices(BenchModel)
MODES = choices(BenchMode)


class Autocast(nn.Module):
    """Runs ``module`` under bf16 autocast on its device and returns float32 outputs."""

    def __init__(self, module: nn.Module, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.module = module
        self.dtype = dtype

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        device_type = next(self.module.parameters()).device.type
        with torch.autocast(device_type=device_type, dtype=self.dtype):
            output = self.module(*args, **kwargs)
        return output.float() if isinstance(output, torch.Tensor) else output


class ChannelsLast(nn.Module):
    """``module`` converted to channels-last memory format, fed channels-last inputs (NHWC: what
    tensor cores and cuDNN's fastest convolutions want)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> Any:
        return self.module(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x)


class TF32(nn.Module):
    """``module`` with float32 matmuls and convolutions on TF32 tensor cores. The benchmark's step
    reads ``float32_matmul_precision`` and sets it around the whole step, backward included."""

    float32_matmul_precision = "tf32"

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any) -> Any:
        return self.module(*args)


class HandWritten(nn.Module):
    """The anchor row: what a user writes by hand for speed, in plain PyTorch and without perfkit:
    bf16 autocast, channels-last for conv nets, ``torch.compile`` (compiled at the first call)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.channels_last = any(isinstance(m, nn.Conv2d) for m in module.modules())
        self.module = module.to(memory_format=torch.channels_last) if self.channels_last else module
        self._compiled: Any = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._compiled is None:
            self._compiled = torch.compile(self.module)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
            return self._compiled(x).float()


def eager_network(variant: nn.Module) -> nn.Module:
    """The eager network inside a variant's wrappers (whose FLOPs are the variant's)."""
    while hasattr(variant, "module") and isinstance(variant.module, nn.Module):
        variant = variant.module
    return variant


def precision_of(variant: str) -> str:
    """The arithmetic a variant's matmuls run in: bf16, tf32 or fp32."""
    if variant.startswith("bf16") or variant == "handwritten":
        return "bf16"
    return "tf32" if variant.startswith("tf32") else "fp32"


@dataclass(frozen=True)
class Settings:
    """What the builders need besides the network."""

    example_inputs: torch.Tensor
    prune_amount: float = 0.5
    # a batch of the timed size: int8's backend is chosen by timing both libraries on it
    timing_inputs: torch.Tensor | None = None


# builds a variant from the eager network and the variants already built (to reuse a pruned one)
Builder = Callable[[nn.Module, dict[str, nn.Module], Settings], nn.Module]


def _channels(net: nn.Module, built: dict[str, nn.Module], settings: Settings) -> nn.Module:
    if "prune_channels" in built:
        return built["prune_channels"]
    inputs = settings.example_inputs[:1].to(next(net.parameters()).device)
    return prune(net, amount=settings.prune_amount, method="channels", example_inputs=inputs)


VARIANTS: dict[str, Builder] = {
    "eager": lambda net, built, s: net,
    "compile": lambda net, built, s: compile(net),
    "bf16": lambda net, built, s: Autocast(net),
    "prune_unstructured": lambda net, built, s: prune(net, amount=s.prune_amount, method="l1_unstructured"),
    "prune_channels": _channels,
    "int8_dynamic": lambda net, built, s: quantize(
        net, example_inputs=(s.example_inputs if s.timing_inputs is None else s.timing_inputs).cpu()
    ),
    "compile_channels": lambda net, built, s: compile(_channels(net, built, s)),
    # the GPU preset's variants (bench=gpu); each works on the CPU too, where it makes sense
    "tf32": lambda net, built, s: TF32(net),
    "channels_last": lambda net, built, s: ChannelsLast(_copy(net)),
    "bf16_channels_last": lambda net, built, s: Autocast(ChannelsLast(_copy(net))),
    "compile_max_autotune": lambda net, built, s: compile(net, mode="max-autotune"),
    "cuda_graphs": lambda net, built, s: compile(net, mode="reduce-overhead"),
    "bf16_channels_last_compile": lambda net, built, s: compile(Autocast(ChannelsLast(_copy(net)))),
    "bf16_channels_last_max_autotune": lambda net, built, s: compile(
        Autocast(ChannelsLast(_copy(net))), mode="max-autotune"
    ),
    "handwritten": lambda net, built, s: HandWritten(_copy(net)),
}


GPU_VARIANTS: tuple[str, ...] = tuple(v for v in VARIANTS if v not in CLASSIC_VARIANTS[3:])


def _copy(net: nn.Module) -> nn.Module:
    """Builders that convert the memory format work on a copy: the other variants share ``net``."""
    import copy

    return copy.deepcopy(net)


DESCRIPTIONS: dict[str, str] = {
    "eager": "the network as trained, float32",
    "compile": "torch.compile (inductor, default mode)",
    "bf16": "bf16 autocast",
    "prune_unstructured": "50% of each layer's weights zeroed (L1 magnitude), dense kernels",
    "prune_channels": "channels removed with Torch-Pruning (dependency-aware), then optionally fine-tuned",
    "int8_dynamic": "int8 dynamic quantization of Linear layers (torch.ao or torchao, whichever ran faster here)",
    "compile_channels": "channel-pruned, then torch.compile",
    "tf32": "float32 matmuls and convolutions on TF32 tensor cores",
    "channels_last": "channels-last (NHWC) memory format",
    "bf16_channels_last": "bf16 autocast, channels-last",
    "compile_max_autotune": "torch.compile, max-autotune (kernel autotuning, CUDA graphs)",
    "cuda_graphs": "torch.compile, reduce-overhead (the step replayed as CUDA graphs)",
    "bf16_channels_last_compile": "bf16 autocast, channels-last, torch.compile",
    "bf16_channels_last_max_autotune": "bf16 autocast, channels-last, torch.compile max-autotune",
    "handwritten": "plain PyTorch as a user writes it for speed: bf16 autocast, channels-last, torch.compile",
}
CPU_ONLY = {"int8_dynamic": "int8 dynamic quantization runs on the CPU only"}
CUDA_ONLY = {
    "tf32": "TF32 is a tensor-core format of NVIDIA GPUs",
    "cuda_graphs": "CUDA graphs need a CUDA device",
}


def check_choices(kind: str, names: list[str], allowed: tuple[str, ...] | list[str]) -> None:
    """Raise one line naming the unknown entries and the allowed ones."""
    unknown = [name for name in names if name not in allowed]
    if unknown:
        raise ValueError(f"unknown {kind} {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}")
    if not names:
        raise ValueError(f"no {kind} chosen; allowed: {', '.join(allowed)}")


def skip_reason(variant: str, device: torch.device, mode: str, model: nn.Module | None = None) -> str | None:
    """Why ``variant`` cannot be measured on ``device`` in ``mode``, or None when it can."""
    if device.type == "cuda" and not torch.cuda.is_available():
        return "CUDA is not available on this machine"
    if device.type != "cpu" and variant in CPU_ONLY:
        return CPU_ONLY[variant]
    if device.type != "cuda" and variant in CUDA_ONLY:
        return CUDA_ONLY[variant]
    if mode == "train" and variant == "int8_dynamic":
        return "int8 dynamic modules have no backward: inference only"
    if mode == "train" and model is not None and not any(p.requires_grad for p in model.parameters()):
        return "no trainable parameters: an inference-only variant"
    return None


def build(variant: str, net: nn.Module, built: dict[str, nn.Module], settings: Settings) -> nn.Module:
    """Build ``variant`` of ``net`` (already on its device, in eval mode)."""
    check_choices("variant", [variant], tuple(VARIANTS))
    return VARIANTS[variant](net, built, settings)


def network(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """One of perfkit's networks by its config name, randomly initialised."""
    import torchvision

    from perfkit.models import MLP, SmallCNN, resnet18, vit

    check_choices("model", [name], MODELS)
    if name == "resnet50":  # torchvision's, random init: GPU-sized work
        return torchvision.models.resnet50(num_classes=num_classes)
    if name == "vit_b_16":
        return torchvision.models.vit_b_16(num_classes=num_classes, image_size=input_shape[-1])
    factories: dict[str, Callable[..., nn.Module]] = {
        "cnn": SmallCNN,
        "mlp": MLP,
        "resnet18": resnet18,
        "vit": vit,
    }
    return factories[name](input_shape, num_classes)

"""The variant matrix: each optimization perfkit offers, built from one trained (or random) network.

A variant is a model plus how to run it. Every builder returns a new module and leaves its input
untouched, so all variants of a network can be timed side by side. A variant that cannot run on a
device, or cannot train, says why instead of producing a number.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from perfkit.bench.catalog import CATALOG, REGISTRY, preset
from perfkit.models import MLP, SmallCNN, resnet18, vit
from perfkit.optim import compile, prune, quantize
from perfkit.schemas import BenchMode, BenchModel, choices
from perfkit.system import missing_device

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
    """The arithmetic a variant's matmuls run in: bf16, tf32 or fp32 (a caller's own variant: read
    from its name's prefix)."""
    if variant in REGISTRY:
        return REGISTRY[variant].precision
    return "bf16" if variant.startswith("bf16") else "tf32" if variant.startswith("tf32") else "fp32"


@dataclass(frozen=True)
class Settings:
    """What the builders need besides the network."""

    example_inputs: torch.Tensor
    prune_amount: float = 0.5
    # a batch of the timed size: int8's backend is chosen by timing both libraries on it
    timing_inputs: torch.Tensor | None = None


# builds a variant from the eager network and the variants already built (to reuse a pruned one)
Builder = Callable[[nn.Module, dict[str, nn.Module], Settings], nn.Module]


def as_trained(net: nn.Module, built: dict[str, nn.Module], s: Settings) -> nn.Module:
    return net


def compiled(net: nn.Module, built: dict[str, nn.Module], s: Settings) -> nn.Module:
    return compile(net)


def autocast(net: nn.Module, built: dict[str, nn.Module], s: Settings) -> nn.Module:
    return Autocast(net)


def pruned_unstructured(net: nn.Module, built: dict[str, nn.Module], s: Settings) -> nn.Module:
    return prune(net, amount=s.prune_amount, method="l1_unstructured")


def pruned_channels(net: nn.Module, built: dict[str, nn.Module], s: Settings) -> nn.Module:
    if "prune_channels" in built:
        return built["prune_channels"]
    inputs = s.example_inputs[:1].to(next(net.parameters()).device)
    return prune(net, amount=s.prune_amount, method="channels", example_inputs=inputs)


def quantized(net: nn.Module, built: dict[str, nn.Module], s: Settings) -> nn.Module:
    return quantize(
        net, example_inputs=(s.example_inputs if s.timing_inputs is None else s.timing_inputs).cpu()
    )


def compiled_channels(net: nn.Module, built: dict[str, nn.Module], s: Settings) -> nn.Module:
    return compile(pruned_channels(net, built, s))


def tf32(net: nn.Module, built: dict[str, nn.Module], s: Settings) -> nn.Module:
    return TF32(net)


def channels_last(net: nn.Module, built: dict[str, nn.Module], s: Settings) -> nn.Module:
    return ChannelsLast(_copy(net))


def bf16_channels_last(net: nn.Module, built: dict[str, nn.Module], s: Settings) -> nn.Module:
    return Autocast(ChannelsLast(_copy(net)))


def compiled_max_autotune(net: nn.Module, built: dict[str, nn.Module], s: Settings) -> nn.Module:
    return compile(net, mode="max-autotune")


def cuda_graphs(net: nn.Module, built: dict[str, nn.Module], s: Settings) -> nn.Module:
    return compile(net, mode="reduce-overhead")


def bf16_channels_last_compiled(net: nn.Module, built: dict[str, nn.Module], s: Settings) -> nn.Module:
    return compile(Autocast(ChannelsLast(_copy(net))))


def bf16_channels_last_max_autotune(net: nn.Module, built: dict[str, nn.Module], s: Settings) -> nn.Module:
    return compile(Autocast(ChannelsLast(_copy(net))), mode="max-autotune")


def handwritten(net: nn.Module, built: dict[str, nn.Module], s: Settings) -> nn.Module:
    return HandWritten(_copy(net))


def _copy(net: nn.Module) -> nn.Module:
    """Builders that convert the memory format work on a copy: the other variants share ``net``."""
    return copy.deepcopy(net)


# each catalog record's builder, by variant name
VARIANTS: dict[str, Builder] = {variant.name: globals()[variant.builder] for variant in CATALOG}
GPU_VARIANTS: tuple[str, ...] = preset("gpu")


def check_choices(kind: str, names: list[str], allowed: tuple[str, ...] | list[str]) -> None:
    """Raise one line naming the unknown entries and the allowed ones."""
    unknown = [name for name in names if name not in allowed]
    if unknown:
        raise ValueError(f"unknown {kind} {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}")
    if not names:
        raise ValueError(f"no {kind} chosen; allowed: {', '.join(allowed)}")


def skip_reason(variant: str, device: torch.device, mode: str, model: nn.Module | None = None) -> str | None:
    """Why ``variant`` cannot be measured on ``device`` in ``mode``, or None when it can."""
    if missing_device(device):
        return missing_device(device)
    record = REGISTRY.get(variant)  # None: a caller's own variant (perfkit.benchmark)
    if record is not None and device.type not in record.devices:
        return record.elsewhere
    if mode == "train" and record is not None and record.inference_only:
        return record.inference_only
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

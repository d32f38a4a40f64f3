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

MODELS: tuple[str, ...] = ("cnn", "mlp", "resnet18", "vit")
MODES: tuple[str, ...] = ("inference", "train")


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


@dataclass(frozen=True)
class Settings:
    """What the builders need besides the network."""

    example_inputs: torch.Tensor
    prune_amount: float = 0.5


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
    "int8_dynamic": lambda net, built, s: quantize(net),
    "compile_channels": lambda net, built, s: compile(_channels(net, built, s)),
}
DESCRIPTIONS: dict[str, str] = {
    "eager": "the network as trained, float32",
    "compile": "torch.compile (inductor, default mode)",
    "bf16": "bf16 autocast",
    "prune_unstructured": "50% of each layer's weights zeroed (L1 magnitude), dense kernels",
    "prune_channels": "channels removed with Torch-Pruning (dependency-aware), then optionally fine-tuned",
    "int8_dynamic": "int8 dynamic quantization of Linear layers (torch.ao, x86/fbgemm)",
    "compile_channels": "channel-pruned, then torch.compile",
}
CPU_ONLY = {"int8_dynamic": "int8 dynamic quantization runs on the CPU only"}


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
    from perfkit.models import MLP, SmallCNN, resnet18, vit

    check_choices("model", [name], MODELS)
    factories: dict[str, Callable[..., nn.Module]] = {
        "cnn": SmallCNN,
        "mlp": MLP,
        "resnet18": resnet18,
        "vit": vit,
    }
    return factories[name](input_shape, num_classes)

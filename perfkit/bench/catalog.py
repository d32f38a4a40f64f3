"""The benchmark's variants: one record each, the only list of them.

A record says how to build the variant (``builder``: a function in :mod:`perfkit.bench.variants`,
named here so that this table stays plain data that :mod:`perfkit.schemas` can read without torch),
what it is, the arithmetic its matmuls run in, the devices it runs on, whether it trains, and the
presets that measure it. Adding a variant is one record here (and its builder when no existing one
fits); the config's choices, the presets, the skip reasons and the report's descriptions follow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Precision = Literal["fp32", "bf16", "tf32"]
Preset = Literal["classic", "gpu"]  # classic: bench=quick and bench=full; gpu: bench=gpu


@dataclass(frozen=True)
class Variant:
    name: str
    builder: str  # a function (network, built, settings) -> module in perfkit.bench.variants
    description: str
    precision: Precision = "fp32"
    devices: tuple[str, ...] = ("cpu", "cuda")  # device types it runs on
    elsewhere: str = ""  # why not on the other device types
    inference_only: str = ""  # why it cannot train (empty: it trains)
    presets: tuple[Preset, ...] = ()


CATALOG: tuple[Variant, ...] = (
    Variant("eager", "as_trained", "the network as trained, float32", presets=("classic", "gpu")),
    Variant("compile", "compiled", "torch.compile (inductor, default mode)", presets=("classic", "gpu")),
    Variant("bf16", "autocast", "bf16 autocast", "bf16", presets=("classic", "gpu")),
    Variant(
        "prune_unstructured",
        "pruned_unstructured",
        "50% of each layer's weights zeroed (L1 magnitude), dense kernels",
        presets=("classic",),
    ),
    Variant(
        "prune_channels",
        "pruned_channels",
        "channels removed with Torch-Pruning (dependency-aware), then optionally fine-tuned",
        presets=("classic",),
    ),
    Variant(
        "int8_dynamic",
        "quantized",
        "int8 dynamic quantization of Linear layers (torch.ao or torchao, whichever ran faster here)",
        devices=("cpu",),
        elsewhere="int8 dynamic quantization runs on the CPU only",
        inference_only="int8 dynamic modules have no backward: inference only",
        presets=("classic",),
    ),
    Variant(
        "compile_channels", "compiled_channels", "channel-pruned, then torch.compile", presets=("classic",)
    ),
    # the GPU preset's variants; each works on the CPU too, where it makes sense
    Variant(
        "tf32",
        "tf32",
        "float32 matmuls and convolutions on TF32 tensor cores",
        "tf32",
        devices=("cuda",),
        elsewhere="TF32 is a tensor-core format of NVIDIA GPUs",
        presets=("gpu",),
    ),
    Variant("channels_last", "channels_last", "channels-last (NHWC) memory format", presets=("gpu",)),
    Variant(
        "bf16_channels_last", "bf16_channels_last", "bf16 autocast, channels-last", "bf16", presets=("gpu",)
    ),
    Variant(
        "compile_max_autotune",
        "compiled_max_autotune",
        "torch.compile, max-autotune (kernel autotuning, CUDA graphs)",
        presets=("gpu",),
    ),
    Variant(
        "cuda_graphs",
        "cuda_graphs",
        "torch.compile, reduce-overhead (the step replayed as CUDA graphs)",
        devices=("cuda",),
        elsewhere="CUDA graphs need a CUDA device",
        presets=("gpu",),
    ),
    Variant(
        "bf16_channels_last_compile",
        "bf16_channels_last_compiled",
        "bf16 autocast, channels-last, torch.compile",
        "bf16",
        presets=("gpu",),
    ),
    Variant(
        "bf16_channels_last_max_autotune",
        "bf16_channels_last_max_autotune",
        "bf16 autocast, channels-last, torch.compile max-autotune",
        "bf16",
        presets=("gpu",),
    ),
    Variant(
        "handwritten",
        "handwritten",
        "plain PyTorch as a user writes it for speed: bf16 autocast, channels-last, torch.compile",
        "bf16",
        presets=("gpu",),
    ),
)
REGISTRY: dict[str, Variant] = {variant.name: variant for variant in CATALOG}
NAMES: tuple[str, ...] = tuple(REGISTRY)


def preset(name: Preset) -> tuple[str, ...]:
    """The variants a preset measures, in catalog order."""
    return tuple(variant.name for variant in CATALOG if name in variant.presets)

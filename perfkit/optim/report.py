"""What an optimization changed: the report every transform attaches to the model it returns."""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from perfkit.reporting import markdown_table

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class OptimizationReport:
    """Before/after facts of one transform. Layer counts are by module type name."""

    transform: str
    changed: dict[str, int]
    skipped: dict[str, int]
    params_before: int
    params_after: int
    size_bytes_before: int
    size_bytes_after: int
    sparsity_before: float
    sparsity_after: float
    notes: list[str] = field(default_factory=list)
    measured: dict[str, Any] = field(default_factory=dict)  # what a choice made by timing measured

    @property
    def size_ratio(self) -> float:
        """How many times smaller the serialized state is (2.0 = half the bytes)."""
        return self.size_bytes_before / self.size_bytes_after if self.size_bytes_after else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "size_ratio": self.size_ratio}

    def to_markdown(self) -> str:
        def layers(counts: dict[str, int]) -> str:
            return ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())) or "none"

        rows = [
            ("layers changed", layers(self.changed)),
            ("layers left alone", layers(self.skipped)),
            ("parameters", f"{self.params_before:,} -> {self.params_after:,}"),
            (
                "serialized size",
                f"{self.size_bytes_before:,} B -> {self.size_bytes_after:,} B ({self.size_ratio:.2f}x smaller)",
            ),
            (
                "weight sparsity (exact zeros among all weight matrices, int8 ones dequantized)",
                f"{self.sparsity_before:.1%} -> {self.sparsity_after:.1%}",
            ),
        ]
        lines = [f"**{self.transform}**", "", *markdown_table(["", ""], rows)]
        lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()


def reports(model: nn.Module) -> list[OptimizationReport]:
    """Reports of every perfkit transform applied to ``model``, oldest first."""
    return list(getattr(model, "perfkit_reports", []))


def attach(model: nn.Module, source: nn.Module, report: OptimizationReport) -> None:
    """Record ``report`` on ``model``, after those its ``source`` already carried."""
    object.__setattr__(model, "perfkit_reports", [*reports(source), report])


def count_parameters(model: nn.Module) -> int:
    """Weights and biases, including those packed inside quantized modules."""
    total = sum(p.numel() for p in model.parameters())
    for module in model.modules():
        total += sum(t.numel() for t in _packed_tensors(module))
    return total


def _packed_tensors(module: nn.Module) -> list[torch.Tensor]:
    """Weights and biases that quantized modules keep packed, outside ``parameters()``."""
    from torch.ao.nn.quantized import dynamic as qdynamic
    from torch.ao.nn.quantized.dynamic.modules.rnn import RNNBase, RNNCellBase

    if isinstance(module, qdynamic.Linear):
        weight, bias = module._weight_bias()
        return [weight] if bias is None else [weight, bias]
    if isinstance(module, RNNBase):
        values = [*module.get_weight().values(), *module.get_bias().values()]
    elif isinstance(module, RNNCellBase):
        packed = module._weight_bias()
        values = [*packed["weight"].values(), *packed["bias"].values()]
    else:
        return []
    return [v for v in values if isinstance(v, torch.Tensor)]


def serialized_size(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``: what a checkpoint of the weights costs."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def require_module(model: Any, transform: str) -> None:
    """A one-line TypeError for a transform given something that is not a module."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{transform} takes a torch.nn.Module, not {type(model).__name__} ({model!r:.60})")
    on_meta = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if on_meta:
        raise ValueError(
            f"{transform}: the model's weights are on the meta device ({on_meta[0]}{' and others' if len(on_meta) > 1 else ''}),"
            " with no values to measure or keep; materialize them first: model.to_empty(device='cpu') and "
            "load_state_dict(...)"
        )


def weight_matrices(model: nn.Module) -> list[torch.Tensor]:
    """Every weight matrix (parameters of 2 or more dimensions: Linear, Conv, attention projections,
    embeddings), with quantized layers' packed weights dequantized."""
    matrices = [_plain(p.detach()) for p in model.parameters() if p.dim() >= 2]
    for module in model.modules():
        matrices += [t.dequantize() if t.is_quantized else t for t in _packed_tensors(module) if t.dim() >= 2]
    return matrices


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """A torchao int8 weight (a tensor subclass) as the float matrix it stands for."""
    if type(tensor) in (torch.Tensor, nn.Parameter) or not hasattr(tensor, "dequantize"):
        return tensor
    return tensor.dequantize()


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero entries over all the model's weight matrices."""
    matrices = weight_matrices(model)
    zeros = sum(int((m == 0).sum()) for m in matrices)
    total = sum(m.numel() for m in matrices)
    return zeros / total if total else 0.0


def layer_types(model: nn.Module) -> Counter[str]:
    """Modules that hold weights of their own (leaves, and containers such as MultiheadAttention whose
    projection matrix is their own parameter), by type name."""
    # quantized layers keep their weights packed in a child module: count the layer, not the child
    return Counter(
        type(m).__name__
        for m in model.modules()
        if _packed_tensors(m) or any(True for _ in m.parameters(recurse=False))
    )


def replaced_layers(before: nn.Module, after: nn.Module) -> Counter[str]:
    """Modules of ``before`` whose counterpart in ``after`` (same name) has another type or weight type."""
    after_modules = dict(after.named_modules())
    changed: Counter[str] = Counter()
    for name, module in before.named_modules():
        counterpart = after_modules.get(name)
        if counterpart is None or counterpart is module:
            continue
        old_weight, new_weight = getattr(module, "weight", None), getattr(counterpart, "weight", None)
        if type(counterpart) is not type(module) or type(old_weight) is not type(new_weight):
            changed[type(module).__name__] += 1
    return changed


def measure(
    transform: str, before: nn.Module, after: nn.Module, changed: Counter[str], notes: list[str]
) -> OptimizationReport:
    """Build the report of a transform from the two models."""
    skipped = layer_types(before) - changed
    return OptimizationReport(
        transform=transform,
        changed=dict(changed),
        skipped=dict(skipped),
        params_before=count_parameters(before),
        params_after=count_parameters(after),
        size_bytes_before=serialized_size(before),
        size_bytes_after=serialized_size(after),
        sparsity_before=weight_sparsity(before),
        sparsity_after=weight_sparsity(after),
        notes=notes,
    )

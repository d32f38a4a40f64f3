"""What the benchmark times: one inference pass, or one training step (forward, backward, optimizer
step), as a zero-argument call with its inputs already on the device."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from perfkit.bench.utilization import float32_matmul
from perfkit.schemas import BenchOptimizer, choices

LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

OPTIMIZERS = choices(BenchOptimizer)


def step_function(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    device: torch.device,
    mode: str,
    targets: torch.Tensor | None = None,
    loss_fn: LossFunction = F.cross_entropy,
    optimizer: str = "sgd",
) -> Callable[[], Any]:
    """A zero-argument call of one inference pass or one training step, inputs already on ``device``.

    Training steps use SGD, or ``optimizer="adamw"``: torch's fused AdamW (what a tuned hand-written
    loop uses). A variant with ``float32_matmul_precision`` (TF32) gets it around the whole step.
    """

    inputs = tuple(t.to(device) for t in inputs)
    precision = getattr(model, "float32_matmul_precision", "fp32")
    if mode == "inference":
        model = model.to(device).eval()

        def infer() -> Any:
            with torch.inference_mode(), float32_matmul(precision):
                return model(*inputs)

        return infer
    if targets is None:
        raise ValueError("mode='train' needs targets")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
    trained = copy.deepcopy(model).to(device).train()
    labels = targets.to(device)
    parameters = [p for p in trained.parameters() if p.requires_grad]
    update = (
        torch.optim.AdamW(parameters, lr=1e-3, fused=True)
        if optimizer == "adamw"
        else torch.optim.SGD(parameters, lr=1e-3)
    )

    def train_step() -> None:
        with float32_matmul(precision):
            update.zero_grad(set_to_none=True)
            loss_fn(trained(*inputs), labels).backward()
            update.step()

    return train_step

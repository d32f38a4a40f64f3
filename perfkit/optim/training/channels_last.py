"""``optimize.channels_last``: train with convolution weights, and so activations, in channels-last
(NHWC) memory order, the layout cuDNN's tensor-core kernels and oneDNN's CPU kernels run fastest.

A convolution whose weight is channels-last gives a channels-last output for a contiguous (NCHW)
input, so converting the module once is enough: batches need no change. Numerics are those of the
NCHW run up to summation order. Whether it pays is hardware-dependent: ``perfkit.tune`` measures it.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from perfkit.optim.training.base import TrainingOptimization, find, register
from perfkit.schemas import TrainOptimize


@register
class ChannelsLast(TrainingOptimization):
    """Convert the LightningModule's 4-D weights to ``torch.channels_last`` at setup, before the
    optimizer and any DDP wrapper are built (the parameters stay the same objects)."""

    name = "channels_last"
    order = 20

    @classmethod
    def from_settings(cls, settings: TrainOptimize, model: nn.Module) -> list[L.Callback]:
        return [cls()] if settings.channels_last else []

    @classmethod
    def describe(cls, settings: TrainOptimize, model: nn.Module, trainer: L.Trainer) -> dict[str, Any]:
        converter = find(trainer, cls)
        return {"channels_last": {"converted_weights": converter.converted}} if converter else {}

    def __init__(self) -> None:
        self.converted = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        weights = [p for p in pl_module.parameters() if p.dim() == 4]
        if not weights:
            if not self.converted:
                rank_zero_warn(
                    f"optimize.channels_last=true, but {type(pl_module).__name__} has no 4-D (convolution) "
                    "weight: nothing to convert, it trains as before"
                )
            return
        pl_module.to(memory_format=torch.channels_last)
        self.converted = len(weights)

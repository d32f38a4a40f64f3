"""One benchmark model ready for the matrix: its network, the pruned one, and its data."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Prepared:
    """One model ready for the matrix: its network (trained or not) and held-out data."""

    name: str
    net: nn.Module
    channels: nn.Module | None  # the channel-pruned network, fine-tuned when the model was trained
    test_batches: list[tuple[torch.Tensor, torch.Tensor]]
    trained: bool
    notes: dict[str, list[str]]
    calibration: list[torch.Tensor] = dataclasses.field(default_factory=list)  # training images

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``size`` held-out images and labels (repeated when the test set is smaller)."""
        images = torch.cat([x for x, _ in self.test_batches])
        labels = torch.cat([y for _, y in self.test_batches])
        repeats = -(-size // len(images))
        return images.repeat(repeats, *[1] * (images.dim() - 1))[:size], labels.repeat(repeats)[:size]

"""Small user-style models (not perfkit's) that the optimization tests run on."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn


class TinyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    @staticmethod
    def example_inputs() -> torch.Tensor:
        return torch.randn(8, 32)


class TinyConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))

    @staticmethod
    def example_inputs() -> torch.Tensor:
        return torch.randn(8, 3, 12, 12)


class GRUTextModel(nn.Module):
    """Token ids -> embedding -> GRU -> class logits."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(100, 16)
        self.gru = nn.GRU(16, 32, batch_first=True)
        self.head = nn.Linear(32, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.gru(self.embedding(tokens))
        return self.head(hidden[:, -1])

    @staticmethod
    def example_inputs() -> torch.Tensor:
        return torch.randint(0, 100, (8, 10))


class ConvOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


TOY_MODELS = {"mlp": TinyMLP, "conv": TinyConvNet, "gru": GRUTextModel}


class FailOnRank(L.Callback):
    """A Lightning callback that raises on one rank at one training step: a crash in a DDP job."""

    def __init__(self, rank: int = 1, step: int = 2) -> None:
        super().__init__()
        self.rank = rank
        self.step = step

    def on_train_batch_start(self, trainer: object, *args: object) -> None:
        if (
            getattr(trainer, "global_rank", 0) == self.rank
            and getattr(trainer, "global_step", 0) == self.step
        ):
            raise RuntimeError(f"injected failure on rank {self.rank} at step {self.step}")

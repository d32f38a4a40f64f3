"""Small user-style models (not perfkit's) that the optimization tests run on."""

from __future__ import annotations

import os
import signal

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
    """A Lightning callback that fails one rank at one training step: a crash in a DDP job, by an
    exception, (``how="kill"``) by SIGKILL, as the out-of-memory killer ends a process, or
    (``how="stop"``) by SIGSTOP, which leaves it alive and silent."""

    def __init__(self, rank: int = 1, step: int = 2, how: str = "raise") -> None:
        super().__init__()
        self.rank = rank
        self.step = step
        self.how = how

    def on_train_batch_start(self, trainer: object, *args: object) -> None:
        if (
            getattr(trainer, "global_rank", 0) == self.rank
            and getattr(trainer, "global_step", 0) == self.step
        ):
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if self.how == "stop":  # stopped, as by SIGSTOP or a debugger: alive, but never answers
                os.kill(os.getpid(), signal.SIGSTOP)
            raise RuntimeError(f"injected failure on rank {self.rank} at step {self.step}")


class UserLightningModule(L.LightningModule):
    """A plain LightningModule as a user writes it: its own network, loss and optimizer."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        features = 1
        for size in input_shape:
            features *= size
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(features, num_classes))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, labels = batch
        return nn.functional.cross_entropy(self.net(inputs), labels)

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        inputs, labels = batch
        logits = self.net(inputs)
        self.log(f"{stage}/loss", nn.functional.cross_entropy(logits, labels))
        self.log(f"{stage}/acc", (logits.argmax(dim=1) == labels).float().mean())

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


class RemoveCheckpoints(L.Callback):
    """Deletes the run's checkpoints/ when fit ends, as a user cleaning up disk space mid-run would."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import shutil

        callback = trainer.checkpoint_callback
        if trainer.is_global_zero and callback is not None and getattr(callback, "dirpath", None):
            shutil.rmtree(str(callback.dirpath), ignore_errors=True)


class FailingVariant(nn.Module):
    """A benchmark variant whose every call fails, with a two-line message."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this variant cannot run\nsecond line")

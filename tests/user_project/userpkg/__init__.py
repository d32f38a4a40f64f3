"""A user's own project, written without perfkit in mind: a plain LightningDataModule and
LightningModule with their own parameters, logging ``val/accuracy`` (not perfkit's ``val/acc``)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split


class DigitsData(L.LightningDataModule):
    def __init__(self, batch_size: int = 64) -> None:
        super().__init__()
        self.batch_size = batch_size

    def setup(self, stage: str) -> None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.tensor(digits.data, dtype=torch.float32) / 16.0
        dataset = TensorDataset(images, torch.tensor(digits.target))
        self.train_set, self.val_set, self.test_set = random_split(
            dataset, [1437, 180, 180], generator=torch.Generator().manual_seed(0)
        )

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.val_set, batch_size=256)

    def test_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.test_set, batch_size=256)


class DigitsNet(L.LightningModule):
    def __init__(self, hidden: int = 64, lr: float = 0.01) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layers = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss

    def _evaluate(self, batch: Any, split: str) -> None:
        x, y = batch
        accuracy = (self(x).argmax(dim=1) == y).float().mean()
        self.log(f"{split}/accuracy", accuracy)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class FlawedDigits(DigitsData):
    """DigitsData with one flaw a real dataset can have, in one split: ``corrupt`` (a NaN in one sample),
    ``float64`` (images from numpy, never converted), ``setup`` (a bug in the user's own setup)."""

    def __init__(self, flaw: str = "corrupt", split: str = "val", batch_size: int = 64) -> None:
        super().__init__(batch_size)
        self.flaw, self.split = flaw, split

    def setup(self, stage: str) -> None:
        if self.flaw == "setup":
            raise KeyError("images")  # the user's own bug
        super().setup(stage)
        subset = getattr(self, f"{self.split}_set")
        images, labels = subset.dataset.tensors
        images = images.clone()
        if self.flaw == "corrupt":
            images[subset.indices[3], 5] = float("nan")
        if self.flaw == "float64":
            images = images.double()
        subset.dataset = TensorDataset(images, labels)

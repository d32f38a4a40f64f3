"""A module and datamodule shaped like a Hydra project template's MNIST example."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset, random_split


class DenseNet(nn.Module):
    def __init__(self, input_size: int = 64, hidden: int = 32, output_size: int = 10) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.Linear(input_size, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, output_size)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.view(x.size(0), -1))


class DigitsDataModule(L.LightningDataModule):
    def __init__(
        self,
        data_dir: str = "data/",
        train_val_test_split: tuple[int, int, int] = (1437, 180, 180),
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.data_train: Dataset[Any] | None = None
        self.batch_size_per_device = batch_size

    def prepare_data(self) -> None:
        Path(self.hparams.data_dir).mkdir(parents=True, exist_ok=True)

    def setup(self, stage: str | None = None) -> None:
        if self.trainer is not None:  # the template divides the batch among the ranks
            self.batch_size_per_device = self.hparams.batch_size // self.trainer.world_size
        if self.data_train is None:
            from sklearn.datasets import load_digits

            digits = load_digits()
            dataset = TensorDataset(
                torch.tensor(digits.data, dtype=torch.float32) / 16.0, torch.tensor(digits.target)
            )
            self.data_train, self.data_val, self.data_test = random_split(
                dataset, self.hparams.train_val_test_split, generator=torch.Generator().manual_seed(42)
            )

    def _loader(self, dataset: Dataset[Any], shuffle: bool) -> DataLoader[Any]:
        return DataLoader(
            dataset,
            batch_size=self.batch_size_per_device,
            num_workers=self.hparams.num_workers,
            pin_memory=self.hparams.pin_memory,
            shuffle=shuffle,
        )

    def train_dataloader(self) -> DataLoader[Any]:
        assert self.data_train is not None
        return self._loader(self.data_train, True)

    def val_dataloader(self) -> DataLoader[Any]:
        return self._loader(self.data_val, False)

    def test_dataloader(self) -> DataLoader[Any]:
        return self._loader(self.data_test, False)


class TemplateLitModule(L.LightningModule):
    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        # the template keeps the network and the partials in its hyper-parameters
        self.save_hyperparameters(logger=False)
        self.net = net
        self.criterion = nn.CrossEntropyLoss()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def model_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self.forward(x)
        loss = self.criterion(logits, y)
        return loss, (logits.argmax(dim=1) == y).float().mean()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss, acc = self.model_step(batch)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        loss, acc = self.model_step(batch)
        self.log("val/loss", loss, on_epoch=True, sync_dist=True)
        self.log("val/acc", acc, on_epoch=True, sync_dist=True)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        loss, acc = self.model_step(batch)
        self.log("test/loss", loss, on_epoch=True, sync_dist=True)
        self.log("test/acc", acc, on_epoch=True, sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.hparams.optimizer(params=self.trainer.model.parameters())
        if self.hparams.scheduler is None:
            return {"optimizer": optimizer}
        scheduler = self.hparams.scheduler(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss", "interval": "epoch"},
        }

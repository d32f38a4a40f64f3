"""The LightningModule that trains any image classification network."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

NetFactory = Callable[..., nn.Module]
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


class ImageClassifier(L.LightningModule):
    """Cross-entropy classification whose val/test accuracy and loss are exact under DDP: torchmetrics
    sums correct counts and per-sample losses over all ranks (a mean of per-rank means is not the mean
    when ranks hold different numbers of samples).

    ``net`` is a module or a factory called as ``net(input_shape, num_classes)``; the training script
    fills ``input_shape`` and ``num_classes`` from the datamodule. ``optimizer`` and ``scheduler`` are
    factories (Hydra ``_partial_`` configs), defaulting to AdamW(lr=1e-3) and no schedule.
    """

    def __init__(
        self,
        net: nn.Module | NetFactory,
        input_shape: Sequence[int],
        num_classes: int,
        *,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            {"input_shape": list(input_shape), "num_classes": num_classes, "label_smoothing": label_smoothing}
        )
        self.net = net if isinstance(net, nn.Module) else net(tuple(input_shape), num_classes)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.label_smoothing = label_smoothing
        self.example_input_array = torch.zeros(2, *input_shape)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: Any, stage: str, accuracy: MulticlassAccuracy) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        accuracy(logits, labels)
        if stage == "train":
            self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        else:
            mean_loss: MeanMetric = getattr(self, f"{stage}_loss")
            mean_loss.update(loss.detach(), weight=labels.numel())
            self.log(f"{stage}/loss", mean_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train", self.train_acc)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val", self.val_acc)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test", self.test_acc)

    def configure_optimizers(self) -> Any:
        params = self.parameters()
        optimizer = (
            self.optimizer_factory(params) if self.optimizer_factory else torch.optim.AdamW(params, lr=1e-3)
        )
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}

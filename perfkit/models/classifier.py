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

from perfkit.overhead import LeanHooks

NetFactory = Callable[..., nn.Module]
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


class ImageClassifier(LeanHooks, L.LightningModule):
    """Cross-entropy classification whose val/test accuracy and loss are exact under DDP: torchmetrics
    sums correct counts and per-sample losses over all ranks (a mean of per-rank means is not the mean
    when ranks hold different numbers of samples).

    ``net`` is a module or a factory called as ``net(input_shape, num_classes)``; the training script
    fills ``input_shape`` and ``num_classes`` from the datamodule. ``optimizer`` and ``scheduler`` are
    factories (Hydra ``_partial_`` configs), defaulting to AdamW(lr=1e-3) and no schedule.
    ``warmup_steps`` ramps the learning rate up linearly over the first optimizer steps.
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
        warmup_steps: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            {"input_shape": list(input_shape), "num_classes": num_classes, "label_smoothing": label_smoothing}
        )
        self.net = net if isinstance(net, nn.Module) else net(tuple(input_shape), num_classes)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.label_smoothing = label_smoothing
        if not 0 <= label_smoothing <= 1:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.warmup_steps = warmup_steps
        self.example_input_array = torch.zeros(2, *input_shape)
        # Per-step cost matters: no argument validation and no NaN check (each is a host sync on a
        # GPU), and metrics accumulate with update() and are logged once per epoch.
        self.val_acc, self.test_acc = (
            MulticlassAccuracy(num_classes, average="micro", validate_args=False) for _ in range(2)
        )
        self.val_loss, self.test_loss = (MeanMetric(nan_strategy="disable") for _ in range(2))
        # Training sums correct predictions and losses in two device tensors (a few tensor ops a step;
        # a torchmetrics update costs ~60 us of Python), handed once per epoch to these weighted means,
        # which reduce them exactly over DDP ranks. Plain attributes, not buffers: DDP would overwrite
        # buffers with rank 0's on every forward.
        self.train_acc, self.train_loss = MeanMetric(), MeanMetric()
        self._reset_training_sums(torch.device("cpu"))

    @property
    def example_input_array(self) -> Any:
        """Zeros of the input's shape, in the weights' dtype: under ``precision=64-true`` or
        ``bf16-true`` Lightning's model summary runs the forward on it without converting it."""
        example = self._example_input_array
        weight = next(self.parameters(), None)
        if isinstance(example, torch.Tensor) and weight is not None and weight.is_floating_point():
            return example.to(weight.dtype)
        return example

    @example_input_array.setter
    def example_input_array(self, example: Any) -> None:
        self._example_input_array = example

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _logits_and_losses(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, labels = batch
        logits = self(images)
        losses = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing, reduction="none")
        return logits, losses, labels

    def _evaluation_step(self, batch: Any, stage: str) -> None:
        logits, losses, labels = self._logits_and_losses(batch)
        getattr(self, f"{stage}_acc").update(logits, labels)
        # per-sample losses, so the epoch's loss is the mean over samples whatever the batch sizes (a
        # `weight` argument would be dropped: torchmetrics ignores it with nan_strategy="disable")
        getattr(self, f"{stage}_loss").update(losses)

    def on_train_epoch_start(self) -> None:
        self._reset_training_sums(self.device)

    def _reset_training_sums(self, device: torch.device) -> None:
        self._train_correct = torch.zeros((), dtype=torch.int64, device=device)
        self._train_loss_sum = torch.zeros((), device=device)
        self._train_samples = 0

    def _add_to_training_sums(
        self, logits: torch.Tensor, loss_sum: torch.Tensor, labels: torch.Tensor
    ) -> None:
        if self._train_loss_sum.device != loss_sum.device:  # called outside a Trainer (perfkit.tune)
            self._reset_training_sums(loss_sum.device)
        self._train_loss_sum.add_(loss_sum.detach())
        self._train_correct.add_((logits.detach().argmax(1) == labels).sum())
        self._train_samples += len(labels)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        logits, losses, labels = self._logits_and_losses(batch)
        loss_sum = losses.sum()
        self._add_to_training_sums(logits, loss_sum, labels)
        loss = loss_sum / len(labels)
        # the step's loss for the progress bar and the loggers, at the loggers' cadence: logging it on
        # every step costs Lightning's bookkeeping each step and a host sync wherever it is read
        if _logs_this_step(self):
            self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluation_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluation_step(batch, "test")

    def on_train_epoch_end(self) -> None:
        if samples := self._train_samples:
            # this rank's means weighted by its samples: over all ranks, the sums over all samples
            self.train_acc.update(self._train_correct / samples, weight=samples)
            self.train_loss.update(self._train_loss_sum / samples, weight=samples)
        # the metric objects: Lightning computes them over all ranks, then resets them
        self.log("train/loss_epoch", self.train_loss, prog_bar=True)
        self.log("train/acc", self.train_acc, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test")

    def _log_evaluation(self, stage: str) -> None:
        self.log(f"{stage}/loss", getattr(self, f"{stage}_loss"), prog_bar=True)
        self.log(f"{stage}/acc", getattr(self, f"{stage}_acc"), prog_bar=True)

    def configure_optimizers(self) -> Any:
        params = self.parameters()
        optimizer = (
            self.optimizer_factory(params) if self.optimizer_factory else torch.optim.AdamW(params, lr=1e-3)
        )
        schedulers: list[Any] = []
        if self.warmup_steps:
            # linear warm-up per optimizer step, chained with any epoch schedule (what perfkit.tune pairs
            # with a larger batch's larger learning rate)
            warmup = torch.optim.lr_scheduler.LinearLR(
                optimizer, start_factor=1.0 / (self.warmup_steps + 1), total_iters=self.warmup_steps
            )
            schedulers.append({"scheduler": warmup, "interval": "step"})
        if self.scheduler_factory is not None:
            schedulers.append(self.scheduler_factory(optimizer))  # stepped once per epoch
        if not schedulers:
            return optimizer
        if len(schedulers) == 1:
            return {"optimizer": optimizer, "lr_scheduler": schedulers[0]}
        return [optimizer], schedulers


def _logs_this_step(module: L.LightningModule) -> bool:
    """Whether Lightning writes the loggers after this training step (every ``log_every_n_steps``
    optimizer steps), or the step is the epoch's last."""
    trainer = module._trainer
    if trainer is None:  # called outside a Trainer (perfkit.tune times steps itself): nothing logs
        return False
    every = max(1, getattr(trainer, "log_every_n_steps", 1))  # set by Lightning's logger connector
    return (module.global_step + 1) % every == 0 or trainer.is_last_batch

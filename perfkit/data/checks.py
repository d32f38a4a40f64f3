"""The first batch of every loader, checked before the model sees it: NaN/inf values, dtypes that
the weights cannot take, and (for perfkit's classifier) labels that are not class indices.

A bad batch otherwise ends in a traceback from deep inside the model, or worse, in a run that
"succeeds" with ``null`` losses. One batch per loader is checked (one host sync each), so the
steps after it cost nothing. ``check_data=false`` turns it off for data that holds NaN on purpose.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch

from perfkit.errors import ConfigError, first_line
from perfkit.models.classifier import ImageClassifier

log = logging.getLogger(__name__)


class DataError(ConfigError):
    """A batch the model cannot learn from or be scored on; the message names the loader and tensor."""


def tensors(batch: Any, where: str = "batch") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor in a batch of tuples, lists and dicts, with its position (``batch[0]``, ``batch['x']``)."""
    if isinstance(batch, torch.Tensor):
        yield where, batch
    elif isinstance(batch, list | tuple):
        for index, item in enumerate(batch):
            yield from tensors(item, f"{where}[{index}]")
    elif isinstance(batch, dict):
        for key, item in batch.items():
            yield from tensors(item, f"{where}[{key!r}]")


def check_batch(batch: Any, loader: str, module: L.LightningModule) -> list[str]:
    """Raise :class:`DataError` for a batch no model should take; return what a failure would be
    explained by (float64 tensors beside float32 weights)."""
    weight = next((p for p in module.parameters() if p.is_floating_point()), None)
    hints = []
    for where, tensor in tensors(batch):
        described = f"{where} of the first {loader} batch ({_dtype(tensor)} {list(tensor.shape)})"
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            bad = ~tensor.isfinite()
            sample = int(bad.reshape(len(tensor), -1).any(1).nonzero()[0]) if tensor.dim() else 0
            raise DataError(
                f"data: {described} holds {int(bad.sum())} NaN/inf values, the first in sample {sample}: fix "
                "or drop those samples (check_data=false if they are meant to be there)"
            )
        if _constant(tensor):  # e.g. images clipped to white
            log.warning(
                "data: %s is constant (every value %g): a model learns nothing from it but the label frequencies",
                described,
                float(tensor.reshape(-1)[0]),
            )
        if tensor.dtype == torch.float64 and weight is not None and weight.dtype != torch.float64:
            hints.append(
                f"{described} is float64 but the model's weights are {_dtype(weight)}: convert it in the dataset "
                "or datamodule (tensor.float()), or train with precision=64-true"
            )
    _check_labels(batch, loader, module)
    return hints


def _check_labels(batch: Any, loader: str, module: L.LightningModule) -> None:
    """perfkit's classifier takes ``(images, labels)`` with labels in ``[0, num_classes)``."""

    if not isinstance(module, ImageClassifier) or not (isinstance(batch, list | tuple) and len(batch) == 2):
        return
    labels, classes = batch[1], int(module.hparams["num_classes"])
    if not isinstance(labels, torch.Tensor):
        raise DataError(
            f"data: the first {loader} batch's labels are a {type(labels).__name__}, not a tensor"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise DataError(
            f"data: the first {loader} batch's labels are {_dtype(labels)}: a classifier's labels are class "
            f"indices (integers in 0..{classes - 1}); convert them with labels.long()"
        )
    outside = (labels < 0) | (labels >= classes)
    if bool(outside.any()):
        sample = int(outside.reshape(-1).nonzero()[0])
        raise DataError(
            f"data: the first {loader} batch's label {int(labels.reshape(-1)[sample])} (sample {sample}) is "
            f"outside 0..{classes - 1}: the model has {classes} classes (model.num_classes, from the datamodule)"
        )


def _constant(tensor: torch.Tensor) -> bool:
    """A batch of several samples, each with several values, every one of them equal."""
    if not tensor.is_floating_point() or tensor.dim() < 2 or len(tensor) < 2:
        return False
    return bool((tensor == tensor.reshape(-1)[0]).all())


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


class FirstBatchCheck(L.Callback):
    """:func:`check_batch` on the first batch of each loader (train, each validation and test loader,
    the sanity check's included). ``hints`` keeps what would explain a failure, for the error line."""

    hints: list[str] = []  # noqa: RUF012 - read by the runner after the trainer is gone

    def __init__(self) -> None:
        self.checked: set[tuple[str, int]] = set()
        FirstBatchCheck.hints = []  # a new run: nothing of an earlier one explains its failures

    def _check(self, module: L.LightningModule, batch: Any, loader: str, index: int) -> None:
        if (loader, index) in self.checked:
            return
        self.checked.add((loader, index))
        FirstBatchCheck.hints += check_batch(batch, loader if not index else f"{loader} #{index}", module)

    def on_train_batch_start(
        self, trainer: L.Trainer, module: L.LightningModule, batch: Any, *args: Any
    ) -> None:
        self._check(module, batch, "training", 0)

    def on_validation_batch_start(
        self,
        trainer: L.Trainer,
        module: L.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._check(module, batch, "validation", dataloader_idx)

    def on_test_batch_start(
        self,
        trainer: L.Trainer,
        module: L.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._check(module, batch, "test", dataloader_idx)


def explain(error: BaseException) -> str | None:
    """The first-batch finding behind a dtype error raised in the user's model, or None."""
    text = str(error)
    if FirstBatchCheck.hints and ("dtype" in text or "Double" in text or "double" in text):
        return f"{FirstBatchCheck.hints[0]} ({first_line(error, limit=160, typed=True)})"
    return None

"""``optimize.prune``: pruning during training, then fine-tuning.

Masks (``l1_unstructured``, ``random_unstructured``, ``global_l1``, ``ln_structured``) use Lightning's
``ModelPruning`` (masks kept while fine-tuning, checkpoints saved without them, made permanent at the
end). ``channels`` uses :func:`perfkit.prune`'s Torch-Pruning path on the LightningModule itself.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelPruning
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn

from perfkit.errors import ConfigError
from perfkit.optim.pruning import output_layer, prune_channels_inplace
from perfkit.optim.report import PRUNABLE, weight_sparsity
from perfkit.optim.training.base import TrainingOptimization, register
from perfkit.schemas import TrainOptimize


@register
class PruneChannels(TrainingOptimization):
    """Remove ``amount`` of the channels/neurons (Torch-Pruning) at the start of epoch ``at_epoch``.

    ``at_epoch=0`` prunes before training (the optimizer and DDP then see the small model). Later
    epochs rebuild the optimizer after pruning, which needs a single process: under DDP use 0.
    The model is traced through ``forward`` with ``pl_module.example_input_array`` or, when the
    module sets none, the input of the first training batch (the first element of a tuple batch).
    """

    name = "prune"
    order = 10

    @classmethod
    def from_settings(cls, settings: TrainOptimize, model: nn.Module) -> list[L.Callback]:
        prune = settings.prune
        if prune.amount <= 0:
            return []
        if prune.method == "channels":
            return [cls(prune.amount, at_epoch=prune.at_epoch)]
        return [_mask_pruning(model, prune.amount, prune.method, prune.at_epoch)]

    @classmethod
    def check_trainer(cls, settings: TrainOptimize, trainer: L.Trainer) -> None:
        prune = settings.prune
        if prune.amount <= 0:
            return
        max_epochs = trainer.max_epochs
        if max_epochs is not None and max_epochs >= 0 and prune.at_epoch >= max_epochs:
            raise ConfigError(
                f"optimize.prune.at_epoch={prune.at_epoch} is never reached: trainer.max_epochs={max_epochs} "
                f"runs epochs 0..{max_epochs - 1}"
            )
        if prune.method == "channels":
            check_world_size(prune.at_epoch, trainer.world_size)

    @classmethod
    def describe(cls, settings: TrainOptimize, model: nn.Module, trainer: L.Trainer) -> dict[str, Any]:
        prune = settings.prune
        if prune.amount <= 0:
            return {}
        applied = bool(pruning_applied(trainer))
        described: dict[str, Any] = {
            "amount": prune.amount,
            "method": prune.method,
            "at_epoch": prune.at_epoch,
            "applied": applied,
            "weight_sparsity": round(weight_sparsity(model), 4),
        }
        if not applied:
            described["why_not"] = (
                f"training ended before epoch {prune.at_epoch} started (trainer.max_steps, early "
                "stopping or max_time): nothing was pruned"
            )
        return {"prune": described}

    def __init__(self, amount: float, *, at_epoch: int = 0) -> None:
        self.amount = amount
        self.at_epoch = at_epoch
        self.pruned = False
        self.example: Any = None
        self.example_source = ""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        check_world_size(self.at_epoch, trainer.world_size)
        self.example, self.example_source = example_inputs(trainer, pl_module)
        if self.at_epoch == 0:
            self._prune(pl_module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.pruned and trainer.current_epoch == self.at_epoch:
            self._prune(pl_module)
            # the parameters are new tensors: the optimizer must be built again around them
            trainer.strategy.setup_optimizers(trainer)

    def _prune(self, pl_module: L.LightningModule) -> None:
        example = self.example
        inputs = example.to(pl_module.device) if isinstance(example, torch.Tensor) else example
        prune_channels_inplace(pl_module, self.amount, inputs, keep=output_layer(pl_module, inputs))
        self.pruned = True


def example_inputs(trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[Any, str]:
    """What to trace ``pl_module.forward`` with, and where it came from; ConfigError when neither
    the module nor its training data can say."""
    name = type(pl_module).__name__
    if not is_overridden("forward", pl_module, parent=L.LightningModule):
        raise ConfigError(
            f"optimize.prune.method=channels traces the module's forward, and {name} has none: use a "
            "mask method (optimize.prune.method=l1_unstructured), or perfkit.prune on its network"
        )
    if pl_module.example_input_array is not None:
        return pl_module.example_input_array, "example_input_array"
    datamodule = getattr(trainer, "datamodule", None)
    loader = datamodule.train_dataloader() if datamodule is not None else pl_module.train_dataloader()
    batch = next(iter(loader))
    if isinstance(batch, list | tuple) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0][:2], "the first training batch's inputs (batch[0])"
    if isinstance(batch, torch.Tensor):
        return batch[:2], "the first training batch"
    raise ConfigError(
        f"optimize.prune.method=channels needs an input to trace {name}.forward with: its batches are "
        f"{type(batch).__name__}s, not (inputs, ...) tuples; set self.example_input_array in {name}.__init__"
    )


def pruning_applied(trainer: L.Trainer) -> bool | None:
    """Whether the run's pruning callback pruned (None: the run prunes nothing). ``at_epoch`` may
    never come when ``trainer.max_steps`` or early stopping ends the run first."""
    pruners = [c for c in trainer.callbacks if isinstance(c, PruneChannels | _PruneOnceAtEpoch)]  # type: ignore[attr-defined]
    return any(p.pruned for p in pruners) if pruners else None


def check_world_size(at_epoch: int, world_size: int) -> None:
    """Channel pruning after training started rebuilds the optimizer, which DDP cannot follow."""
    if at_epoch > 0 and world_size > 1:
        raise ConfigError(
            f"optimize.prune.at_epoch={at_epoch} with method=channels needs one process "
            f"(world size is {world_size}); use optimize.prune.at_epoch=0 to prune before DDP starts"
        )


def _mask_pruning(model: nn.Module, amount: float, method: str, at_epoch: int) -> ModelPruning:
    """Lightning's ModelPruning, applied once when epoch ``at_epoch`` starts."""
    layers = [m for m in model.modules() if isinstance(m, PRUNABLE)]
    if method == "ln_structured":
        output = output_layer(model)
        layers = [m for m in layers if m is not output]
    return _PruneOnceAtEpoch(
        at_epoch,
        pruning_fn="l1_unstructured" if method == "global_l1" else method,
        parameters_to_prune=[(m, "weight") for m in layers],
        use_global_unstructured=method == "global_l1",
        amount=amount,
        apply_pruning=False,  # applied by on_train_epoch_start below, exactly once
        use_lottery_ticket_hypothesis=False,  # keep the trained weights that survive
        pruning_dim=0 if method == "ln_structured" else None,
        pruning_norm=2 if method == "ln_structured" else None,
    )


class _PruneOnceAtEpoch(ModelPruning):
    def __init__(self, at_epoch: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.at_epoch = at_epoch
        self.pruning_amount = kwargs["amount"]

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.at_epoch:
            self.apply_pruning(self.pruning_amount)
            self.pruned = True

    pruned = False

"""What a run monitors, and which evaluation stages it can run, for modules of any shape.

A module without ``validation_step`` (a GAN, a language model trained on a stream) still trains and
keeps checkpoints: :class:`TrainingMonitor` follows the one training loss it logs instead of the
validation metric perfkit's config names, or keeps the last epoch when there is no single loss, and
says which in the log and ``metrics.json``.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities.model_helpers import is_overridden

log = logging.getLogger(__name__)

STEPS = {"val": ("validation_step", "val_dataloader"), "test": ("test_step", "test_dataloader")}


def missing_stage(stage: str, model: Any, datamodule: Any) -> str | None:
    """Why ``stage`` (``val``/``test``) cannot run for this module and data, or None when it can."""
    step, loader = STEPS[stage]
    if not is_overridden(step, model):
        return f"{type(model).__name__} has no {step}"
    own_loader = is_overridden(loader, model)
    if datamodule is not None and not own_loader and not is_overridden(loader, datamodule):
        return f"{type(datamodule).__name__} has no {loader}"
    return None


def training_loss(metric_names: list[str]) -> str | None:
    """The one epoch-level (or only) loss among logged training metrics, or None if not exactly one."""
    names = [n for n in metric_names if "loss" in n.lower() and not n.startswith(("val", "test"))]
    epoch = [n for n in names if n.endswith("_epoch")]
    names = epoch or [n for n in names if not n.endswith("_step")]
    return names[0] if len(names) == 1 else None


class TrainingMonitor(L.Callback):
    """For a module that does not validate: at the end of the first training epoch, point the
    checkpoint (and early stopping) at the training loss when the configured metric is not logged."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.metric: str | None = None
        self.note = ""
        self._decided = False

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # runs before ModelCheckpoint's hook: Lightning puts checkpoint callbacks last
        if self._decided:
            return
        self._decided = True
        self.decide(trainer)
        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(callback, ModelCheckpoint) and callback.monitor and callback.monitor != self.metric:
                callback.monitor = self.metric
                callback.mode = "min"
                callback.kth_value = torch.tensor(torch.inf)
            elif isinstance(callback, EarlyStopping) and callback.monitor != self.metric:
                if self.metric is None:
                    callback.strict = False  # nothing to follow: it stays idle
                    callback.check_finite = False
                else:
                    callback.monitor = self.metric
                    callback.mode = "min"
                    callback.best_score = torch.tensor(torch.inf)
        if trainer.is_global_zero:
            log.info(self.note)

    def decide(self, trainer: L.Trainer) -> None:
        configured = [c.monitor for c in trainer.checkpoint_callbacks if getattr(c, "monitor", None)]  # type: ignore[attr-defined]
        logged = [str(name) for name in trainer.callback_metrics if not str(name).startswith("__")]
        if configured and configured[0] in logged:
            self.metric = configured[0]
            self.note = f"{self.reason}: checkpoints follow {self.metric}, a training metric"
            return
        self.metric = training_loss(logged)
        if self.metric is not None:
            self.note = f"{self.reason}: checkpoints/best.ckpt follows the training loss {self.metric} (lower is better)"
        else:
            shown = ", ".join(logged) or "none"
            self.note = (
                f"{self.reason}: checkpoints/best.ckpt holds the last epoch (no single training loss among "
                f"the logged metrics: {shown}; set monitor=NAME monitor_mode=min|max to follow one)"
            )

    def collect(self, trainer: L.Trainer) -> None:
        """After fit in the launching process (``ddp_spawn`` decided in its workers): decide the same."""
        if not self._decided:
            self.decide(trainer)
            self._decided = True

    def summary(self) -> dict[str, Any]:
        return {"metric": self.metric, "mode": "min" if self.metric else None, "why": self.note}

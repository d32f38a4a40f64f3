"""Lightning callbacks perfkit adds to training runs."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.data import extract_batch_size

from perfkit.distributed import received_from_workers, send_to_main_process


class TrainingSpeed(L.Callback):
    """Wall time of each training epoch, validation excluded, and the samples it processed.

    Times include data loading (the loader is iterated inside the epoch), which is what a user
    waits for. On CUDA the device is synchronised at each boundary so queued kernels are counted.
    """

    def __init__(self) -> None:
        self.epoch_times_s: list[float] = []
        self.epoch_samples: list[int] = []
        self._epoch_start = 0.0
        self._validation_start = 0.0
        self._validation_s = 0.0
        self._samples = 0
        # (epochs, optimizer steps) at the end of fit
        self.progress: tuple[int, int] | None = None

    def _now(self, trainer: L.Trainer) -> float:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)
        return time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validation_s = 0.0
        self._samples = 0
        self._epoch_start = self._now(trainer)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._samples += extract_batch_size(batch)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.training or trainer.state.fn == "fit":
            self._validation_start = self._now(trainer)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (trainer.training or trainer.state.fn == "fit") and not trainer.sanity_checking:
            self._validation_s += self._now(trainer) - self._validation_start

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch_times_s.append(self._now(trainer) - self._epoch_start - self._validation_s)
        self.epoch_samples.append(self._samples)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.progress = (trainer.current_epoch, trainer.global_step)
        send_to_main_process(trainer, "epoch_times_s", self.epoch_times_s)
        send_to_main_process(trainer, "epoch_samples", [float(n) for n in self.epoch_samples])
        send_to_main_process(trainer, "progress", [float(n) for n in self.progress])

    def collect(self, trainer: L.Trainer) -> None:
        """After fit: take the measurements from the worker processes when ``ddp_spawn`` ran it."""
        if self.progress is None:
            self.epoch_times_s = received_from_workers(trainer, "epoch_times_s") or []
            self.epoch_samples = [int(n) for n in received_from_workers(trainer, "epoch_samples") or []]
            progress = received_from_workers(trainer, "progress")
            self.progress = (int(progress[0]), int(progress[1])) if progress else None

    def summary(self, world_size: int) -> dict[str, Any]:
        """Throughput over all ranks; the first epoch (warm-up, compilation) is left out when there are more."""
        steady = slice(1, None) if len(self.epoch_times_s) > 1 else slice(None)
        seconds = sum(self.epoch_times_s[steady])
        samples = sum(self.epoch_samples[steady]) * world_size
        return {
            "train_samples_per_s": samples / seconds if seconds > 0 else None,
            "throughput_excludes_first_epoch": len(self.epoch_times_s) > 1,
            "epoch_times_s": [round(t, 4) for t in self.epoch_times_s],
            "train_samples_per_epoch": [n * world_size for n in self.epoch_samples],
        }

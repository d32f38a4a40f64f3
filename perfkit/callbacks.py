"""Lightning callbacks perfkit adds to training runs."""

from __future__ import annotations

import importlib.util
import math
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar
from lightning.pytorch.utilities.data import extract_batch_size

from perfkit.checkpoint import RandomState
from perfkit.distributed import (
    received_from_workers,
    remember_heartbeats,
    remove_heartbeat,
    send_to_main_process,
    write_heartbeat,
)
from perfkit.errors import Interrupted


class TrainingSpeed(L.Callback):
    """Wall time of each training epoch, validation excluded, and the samples it processed; the time
    from ``launched_at`` (a ``time.time()`` stamp: when the command started) to the first training
    step, and the time from that step to the end of fit.

    Times include data loading (the loader is iterated inside the epoch), which is what a user
    waits for. On CUDA the device is synchronised at each epoch boundary so queued kernels are
    counted; never inside an epoch.
    """

    def __init__(self, launched_at: float | None = None) -> None:
        self.launched_at = launched_at
        self.time_to_first_step_s: float | None = None
        self.fit_time_s: float | None = None
        self._first_step_at: float | None = None
        self.epoch_times_s: list[float] = []
        self.epoch_samples: list[int] = []
        self._epoch_start = 0.0
        self._validation_start = 0.0
        self._validation_s = 0.0
        self._validating = False  # a validation ended; its span closes when training goes on
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

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._first_step_at is None:
            self._first_step_at = time.perf_counter()
            if self.launched_at is not None:
                self.time_to_first_step_s = time.time() - self.launched_at
        if self._validating:  # a validation inside the epoch (val_check_interval) ended
            self._close_validation(trainer)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        first = batch[0] if isinstance(batch, list | tuple) and batch else None
        self._samples += len(first) if isinstance(first, torch.Tensor) else extract_batch_size(batch)

    # The whole validation is left out, as a hand-written loop's epoch timer leaves out its validation:
    # its setup, metrics, logging and what the callbacks do when it ends (the best checkpoint is
    # written then), up to the next training batch or the epoch's end. fit_time_s counts everything.
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.training or trainer.state.fn == "fit":
            self._validation_start = self._now(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (trainer.training or trainer.state.fn == "fit") and not trainer.sanity_checking:
            self._validating = True

    def _close_validation(self, trainer: L.Trainer) -> None:
        self._validation_s += self._now(trainer) - self._validation_start
        self._validating = False

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._validating:
            self._close_validation(trainer)
        self.epoch_times_s.append(self._now(trainer) - self._epoch_start - self._validation_s)
        self.epoch_samples.append(self._samples)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.progress = (trainer.current_epoch, trainer.global_step)
        if self._first_step_at is not None:
            self.fit_time_s = self._now(trainer) - self._first_step_at
        send_to_main_process(
            trainer, "timeline", [self.time_to_first_step_s or -1.0, self.fit_time_s or -1.0]
        )
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
            timeline = received_from_workers(trainer, "timeline") or [-1.0, -1.0]
            self.time_to_first_step_s, self.fit_time_s = (t if t >= 0 else None for t in timeline)

    def summary(self, world_size: int) -> dict[str, Any]:
        """Throughput over all ranks; the first epoch (warm-up, compilation) is left out when there are more."""
        steady = slice(1, None) if len(self.epoch_times_s) > 1 else slice(None)
        seconds = sum(self.epoch_times_s[steady])
        samples = sum(self.epoch_samples[steady]) * world_size
        return {
            "train_samples_per_s": samples / seconds if seconds > 0 else None,
            "throughput_excludes_first_epoch": len(self.epoch_times_s) > 1,
            "time_to_first_step_s": _rounded(self.time_to_first_step_s),
            "fit_time_s": _rounded(self.fit_time_s),
            "epoch_times_s": [round(t, 4) for t in self.epoch_times_s],
            "train_samples_per_epoch": [n * world_size for n in self.epoch_samples],
        }


class RandomStates(L.Callback):
    """Every checkpoint carries the random generators' states, and resuming restores them
    (:class:`perfkit.checkpoint.RandomState`): a resumed run draws the same dropout masks and
    shuffles as the run it continues."""

    def state_dict(self) -> dict[str, Any]:

        return {"rng": RandomState.capture()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:

        if "rng" in state_dict:
            RandomState.restore(state_dict["rng"])


class Heartbeat(L.Callback):
    """In a multi-process job each rank notes, at most once a second, the time and step it last
    made progress (:func:`perfkit.distributed.write_heartbeat`); when a collective times out, the rank
    whose note is oldest is the one that stopped answering."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.last = 0.0

    def _beat(self, trainer: L.Trainer, force: bool = False) -> None:

        now = time.monotonic()
        if trainer.world_size > 1 and (force or now - self.last >= 1.0):
            self.last = now
            write_heartbeat(self.directory, trainer.global_rank, trainer.global_step)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:

        remember_heartbeats(self.directory)
        self._beat(trainer, force=True)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._beat(trainer)

    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._beat(trainer)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:

        if trainer.world_size > 1 and trainer.state.status.value == "finished":
            remove_heartbeat(self.directory, trainer.global_rank)


class InterruptWatch(L.Callback):
    """Notes a Ctrl-C (:class:`perfkit.errors.Interrupted`) before Lightning exits with status 1."""

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:

        if isinstance(exception, KeyboardInterrupt):
            Interrupted.seen = True


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite: every later step would only spread it."""


class DivergenceCheck(L.Callback):
    """Stop training with :class:`DivergedError` once the loss is NaN or infinite, or has grown a
    millionfold over its first value (``optimizer.lr=1e6`` took the default job's loss from 2.3 to 1e28
    without a NaN).

    Each step only folds the loss into a running maximum on the device (no host sync; NaN propagates
    through the maximum); it is read every ``log_every_n_steps`` steps, at each epoch's last batch and
    before validation, so a diverged model is never validated or checkpointed as "best". Under DDP the
    ranks agree (one collective per check) and stop together.
    """

    growth_limit = 1e6

    def __init__(self) -> None:
        self._worst: torch.Tensor | None = None
        self._limit: torch.Tensor | None = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            size = loss.detach().abs()
            if size.ndim:
                size = size.max()
            if self._worst is None or self._limit is None:
                self._worst, self._limit = size, self.growth_limit * size.clamp(min=1.0)
            else:
                self._worst = torch.maximum(self._worst, size)
        every = max(1, getattr(trainer, "log_every_n_steps", 50))
        if (batch_idx + 1) % every == 0 or trainer.is_last_batch:
            self._check(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._check(trainer)

    def _check(self, trainer: L.Trainer) -> None:
        local = False
        if self._worst is not None and self._limit is not None:
            local = not bool(self._worst <= self._limit)  # NaN compares false; inf exceeds any limit
        if trainer.world_size > 1:
            local = trainer.strategy.reduce_boolean_decision(local, all=False)
        if local:
            raise DivergedError(
                f"training diverged: the loss became NaN, infinite or {self.growth_limit:.0e} times its first "
                f"value in epoch {trainer.current_epoch} (by "
                f"optimizer step {trainer.global_step}); lower the learning rate (optimizer.lr) or clip "
                "gradients (trainer.gradient_clip_val=1.0)"
            )


def _rounded(seconds: float | None) -> float | None:
    return round(seconds, 3) if seconds is not None else None


class _Throttled(ProgressBar):
    """Updates the bar at most every ``refresh_s`` seconds while training (and at each epoch's first
    and last batch); validation, epoch ends and the end of training update it as usual.

    Lightning's bars read the logged metrics after every batch (reading a logged tensor is a
    host-device sync: one per step on a GPU), and its Rich bar re-renders on every batch; a skipped
    batch costs a clock read.
    """

    def __init__(self, *args: Any, refresh_s: float = 0.5, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refresh_s = refresh_s
        self._refreshed_at = -math.inf

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._refreshed_at = -math.inf

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.monotonic()
        if now - self._refreshed_at >= self.refresh_s or trainer.is_last_batch:
            self._refreshed_at = now
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


class RichBar(_Throttled, RichProgressBar):
    """Lightning's Rich progress bar, throttled."""


class TQDMBar(_Throttled, TQDMProgressBar):
    """Lightning's tqdm progress bar, throttled (tqdm already limits how often it draws)."""


def add_progress_bar(callbacks: list[L.Callback], *, enabled: bool) -> None:
    """Add perfkit's bar (Rich when installed, as Lightning chooses) unless the run has its own or
    shows none."""
    if enabled and not any(isinstance(c, ProgressBar) for c in callbacks):
        callbacks.append(RichBar() if importlib.util.find_spec("rich") else TQDMBar())

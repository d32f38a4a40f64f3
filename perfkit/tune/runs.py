"""The tuner's measurements, run through Lightning itself: the user's ``training_step`` (automatic or
manual optimization, optimizers that read ``self.trainer``) inside a real ``Trainer.fit`` on fixed
batches, and the module's own ``validation_step`` for its monitored metric."""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

log = logging.getLogger(__name__)


@dataclass
class Score:
    """The metric candidates are judged by: the module's monitored validation metric."""

    metric: str
    mode: str  # "max" or "min"

    def better_or_equal(self, value: float, target: float) -> bool:
        return value >= target if self.mode == "max" else value <= target

    def target(self, baseline: float, tolerance: float) -> float:
        """The worst value still within ``tolerance``: points (x0.01) for a max-metric such as
        accuracy, percent of the baseline for a min-metric such as a loss."""
        if self.mode == "max":
            return baseline - tolerance / 100
        return baseline + abs(baseline) * tolerance / 100

    def drop(self, baseline: float, value: float) -> float:
        """How much worse ``value`` is: points for a max-metric, percent of the baseline for a min one."""
        if self.mode == "max":
            return 100.0 * (baseline - value)
        return 100.0 * (value - baseline) / max(abs(baseline), 1e-12)


class StepTimes(L.Callback):
    """Wall time of each training batch (the step, backward and optimizer as Lightning runs them)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: list[float] = []
        self._start = 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, i: int
    ) -> None:
        self._sync()
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        self._sync()
        self.seconds.append(time.perf_counter() - self._start)


class LearningRate(L.Callback):
    """Sets every optimizer's learning rate to ``lr``, ramped linearly over ``warmup`` steps: a
    larger batch's scaled rate, for modules that build their own optimizer."""

    def __init__(self, lr: float | None, warmup: int) -> None:
        self.lr, self.warmup = lr, warmup

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, i: int
    ) -> None:
        step = trainer.global_step + 1
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                base = self.lr if self.lr is not None else group.setdefault("perfkit_base_lr", group["lr"])
                group["lr"] = base * min(1.0, step / (self.warmup + 1)) if self.warmup else base


class Curve(L.Callback):
    """The monitored metric after each validation, by optimizer step; stops at ``target``."""

    def __init__(self, score: Score, target: float | None) -> None:
        self.score, self.target = score, target
        self.points: list[tuple[int, float]] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.score.metric)
        if value is None or trainer.sanity_checking:
            return
        self.points.append((trainer.global_step, float(value)))
        if self.target is not None and self.score.better_or_equal(float(value), self.target):
            trainer.should_stop = True


def trainer(
    device: torch.device, precision: str | None, callbacks: list[L.Callback], **options: Any
) -> L.Trainer:
    """A quiet single-device Trainer for one measurement."""
    with quiet():
        return _trainer(device, precision, callbacks, **options)


def _trainer(
    device: torch.device, precision: str | None, callbacks: list[L.Callback], **options: Any
) -> L.Trainer:
    return L.Trainer(
        accelerator=device.type,
        devices=1,
        precision=precision or "32-true",  # type: ignore[arg-type]
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        **options,
    )


class Batches:
    """Fixed batches as one loader (a plain list would be read by Lightning as several loaders)."""

    def __init__(self, batches: list[Any]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[Any]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def fit(module: L.LightningModule, train: list[Any], val: list[Any] | None, t: L.Trainer) -> None:
    """``t.fit`` on fixed batches (one epoch of them), quietly."""
    with quiet():
        t.fit(module, train_dataloaders=Batches(train), val_dataloaders=Batches(val) if val else None)


def validate(
    module: L.LightningModule, val: list[Any], device: torch.device, precision: str | None
) -> dict[str, float]:
    """The module's own validation metrics on ``val``."""
    with quiet():
        out = trainer(device, precision, []).validate(module, dataloaders=Batches(val), verbose=False)
    return {k: float(v) for k, v in (out[0] if out else {}).items()}


def batch_size_of(batch: Any) -> int:
    from lightning.pytorch.utilities.data import extract_batch_size

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return int(extract_batch_size(batch))


def concat(batches: list[Any], size: int) -> Any:
    """One batch of ``size`` samples from ``batches`` of any structure (tuples, dicts, ...): every
    tensor leaf with the batch dimension concatenated, and repeated as needed."""
    flat = [tree_flatten(batch) for batch in batches]
    spec = flat[0][1]
    first = batch_size_of(batches[0])
    leaves = []
    for column in zip(*(f[0] for f in flat), strict=True):
        head = column[0]
        if isinstance(head, torch.Tensor) and head.dim() > 0 and head.shape[0] == first:
            joined = torch.cat([c for c in column if isinstance(c, torch.Tensor)])
            repeats = -(-size // len(joined))
            leaves.append(joined.repeat(repeats, *([1] * (joined.dim() - 1)))[:size])
        else:
            leaves.append(head)
    return tree_unflatten(leaves, spec)


def stream(pool: Any, size: int, steps: int) -> list[Any]:
    """``steps`` batches of ``size`` drawn in one fixed order from ``pool`` (one big batch)."""
    leaves, spec = tree_flatten(pool)
    count = batch_size_of(pool)
    out = []
    for step in range(steps):
        index = torch.arange(step * size, (step + 1) * size) % count
        picked = [
            leaf[index]
            if isinstance(leaf, torch.Tensor) and leaf.dim() > 0 and leaf.shape[0] == count
            else leaf
            for leaf in leaves
        ]
        out.append(tree_unflatten(picked, spec))
    return out


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Lightning's per-fit banners and warnings about tiny loaders: expected here, not actionable."""
    names = (
        "lightning.pytorch",
        "lightning.fabric",
        "lightning.pytorch.core.module",
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
    )
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def interleaved_fits(variants: dict[str, Callable[[], list[float]]], rounds: int) -> dict[str, list[float]]:
    """Per variant, the median step time of each round, variants run A B A B (round-robin)."""
    import statistics

    out: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            out[name].append(statistics.median(run()))
    return out

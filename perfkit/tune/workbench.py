"""What every tune measurement shares: the module and its data on a device, real batches, the
held-out score, and short training runs from the same initial weights (cached, so the baseline
trains once)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from typing import Any

import torch

from perfkit.monitoring import missing_stage
from perfkit.optim.training import TrainingOptimizations
from perfkit.schemas import Tune as TuneSettings
from perfkit.system import resolve_device
from perfkit.tune import runs


class Workbench:
    """``module`` (a LightningModule) and ``datamodule`` ready for measuring on ``settings.device``."""

    def __init__(
        self, module: Any, datamodule: Any, settings: TuneSettings, *, monitor: str | None, monitor_mode: str
    ) -> None:
        self.settings = settings
        self.device = device_of(settings.device)
        self.module = module
        self.datamodule = datamodule
        datamodule.prepare_data()
        datamodule.setup("fit")
        self.train_batches = take(datamodule.train_dataloader(), 8)
        if not self.train_batches:
            raise ValueError("the datamodule gave no training batches")
        self.no_score = missing_stage("val", module, datamodule)
        self.val_batches = [] if self.no_score else take(datamodule.val_dataloader(), 16)
        if not self.no_score and not self.val_batches:
            raise ValueError("the datamodule gave no validation batches")
        self.score = runs.Score(monitor or "val/acc", monitor_mode)
        self.batch_size = runs.batch_size_of(self.train_batches[0])
        self.initial_state = copy.deepcopy(module.state_dict())
        self.trained: dict[str, Any] = {}  # the short runs, by training setting
        self._curves: dict[str, list[tuple[int, float]]] = {}  # the monitored metric while training
        self._pool: Any = None

    def fresh_module(self) -> Any:
        """A copy of the module with its initial weights."""
        module = copy.deepcopy(self.module)
        module.load_state_dict(self.initial_state)
        return module

    def batch(self, size: int) -> Any:
        """``size`` real training samples, in the data's own batch structure."""
        return runs.concat(self.train_batches, size)

    def sample_pool(self) -> Any:
        """Training samples for the accuracy runs, as one batch: twice the baseline run's, at most 256 MB."""
        if self._pool is None:
            wanted = 2 * self.settings.accuracy_steps * self.batch_size
            batches = list(self.train_batches)
            while len(batches) * self.batch_size < wanted:
                fresh = take(self.datamodule.train_dataloader(), 10_000)
                if not fresh or len(batches) > 100_000:
                    break
                batches += fresh
            size = sum(runs.batch_size_of(b) for b in batches)
            leaves = [x for x in runs.tree_flatten(batches[0])[0] if isinstance(x, torch.Tensor)]
            per_sample = sum(x[0].numel() * x.element_size() for x in leaves if x.dim() > 0) or 1
            self._pool = runs.concat(batches, min(wanted, size, max(1, (256 << 20) // per_sample)))
        return self._pool

    def score_of(self, module: Any, precision: str | None = None) -> float:
        metrics = runs.validate(module, self.val_batches, self.device, precision)
        if self.score.metric not in metrics:
            raise ValueError(
                f"the module logged no {self.score.metric} in validation (it logged: "
                f"{', '.join(metrics) or 'nothing'}); set monitor=... to one of them"
            )
        return metrics[self.score.metric]

    def train_steps(self, module: Any, steps: int) -> None:
        """``steps`` more optimizer steps of ``module`` (a short fine-tune) in a Trainer."""
        batches = runs.stream(self.sample_pool(), self.batch_size, steps)
        # one validation batch: an epoch-end scheduler (ReduceLROnPlateau) may read a validation metric
        limit = 1 if self.val_batches else 0
        t = runs.trainer(self.device, None, [], max_epochs=1, limit_val_batches=limit)
        runs.fit(module, batches, self.val_batches[:1] or None, t)

    def curve(self, keys: dict[str, Any], steps: int, target: float | None) -> list[tuple[int, float]]:
        """The monitored metric every few optimizer steps while a fresh copy trains under ``keys``
        (its learning rate, warm-up and training optimizations included) in a Trainer, stopping once
        ``target`` is reached."""
        cache_key = repr(sorted(keys.items()))
        if cache_key in self._curves:
            return self._curves[cache_key]
        module = self.fresh_module()
        size = int(keys.get("data.batch_size", self.batch_size))
        curve = runs.Curve(self.score, target)
        callbacks: list[Any] = [
            curve,
            runs.LearningRate(keys.get("optimizer.lr"), int(keys.get("model.warmup_steps", 0))),
            *optimizations(keys).callbacks(module),
        ]
        batches = runs.stream(self.sample_pool(), size, steps)
        t = runs.trainer(
            self.device,
            keys.get("precision"),
            callbacks,
            max_epochs=1,
            val_check_interval=max(1, steps // 12),
        )
        runs.fit(module, batches, self.val_batches, t)
        self._curves[cache_key] = curve.points
        if not keys:
            self.trained["[]"] = module
        return curve.points

    def trained_model(self) -> Any:
        """The module after the baseline's short run."""
        if "[]" not in self.trained:
            self._curves.pop(repr([]), None)
            self.curve({}, self.settings.accuracy_steps, None)
        return self.trained["[]"]


def optimizations(keys: dict[str, Any]) -> TrainingOptimizations:
    """The ``optimize.*`` keys of a training candidate as perfkit.train applies them (the registry)."""
    return TrainingOptimizations.create(
        **{key.removeprefix("optimize."): value for key, value in keys.items() if key.startswith("optimize.")}
    )


def device_of(name: str) -> torch.device:
    return resolve_device(name, "tune.device", instead="tune.device=cpu or auto")


def take(loader: Any, count: int) -> list[Any]:
    """The first ``count`` batches, as the loader gives them (any structure)."""
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) >= count:
            break
    return batches


def autocast(precision: str | None, device: torch.device) -> Callable[[], Any]:
    dtypes = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
    if precision not in dtypes:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtypes[precision])

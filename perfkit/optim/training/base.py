"""The registry of training-time optimizations.

Each is a Lightning callback class that builds itself from the typed ``optimize`` node
(:class:`perfkit.schemas.TrainOptimize`, whose field of the same name is its config), refuses a
Trainer it cannot work with, and says what it did for ``metrics.json``. ``perfkit.train``,
``perfkit.tune`` and the benchmarks apply them all through :class:`TrainingOptimizations`, in
``order``: pruning changes the network before its memory layout changes, and that before it is
compiled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import lightning as L
from omegaconf import DictConfig, OmegaConf
from torch import nn

from perfkit.config.typed import build_typed
from perfkit.schemas import TrainOptimize


class TrainingOptimization(L.Callback):
    """Base of the registered training optimizations: ``name`` is its key under ``optimize``."""

    name: ClassVar[str]
    order: ClassVar[int]
    fields: ClassVar[
        tuple[str, ...]
    ] = ()  # more TrainOptimize fields it reads (flat keys, e.g. compile_mode)

    @classmethod
    def from_settings(cls, settings: TrainOptimize, model: nn.Module) -> list[L.Callback]:
        """The callbacks that carry out ``settings`` on ``model``; none when it is off."""
        raise NotImplementedError

    @classmethod
    def check_trainer(cls, settings: TrainOptimize, trainer: L.Trainer) -> None:
        """Refuse settings this Trainer cannot carry out, before any process starts."""

    @classmethod
    def describe(cls, settings: TrainOptimize, model: nn.Module, trainer: L.Trainer) -> dict[str, Any]:
        """What was applied, for ``metrics.json``'s ``optimize`` (after training); nothing when off."""
        return {}


REGISTRY: list[type[TrainingOptimization]] = []


def register(entry: type[TrainingOptimization]) -> type[TrainingOptimization]:
    """Class decorator: add a training optimization to :data:`REGISTRY` (kept in ``order``)."""
    if entry.name not in {f for f in TrainOptimize.__dataclass_fields__}:
        raise TypeError(f"{entry.__name__}.name={entry.name!r} is not a field of schemas.TrainOptimize")
    if any(other.name == entry.name for other in REGISTRY):
        raise TypeError(f"a training optimization named {entry.name!r} is registered already")
    REGISTRY.append(entry)
    REGISTRY.sort(key=lambda e: e.order)
    return entry


@dataclass(frozen=True)
class TrainingOptimizations:
    """What the ``optimize`` node asks of a training run, applied through :data:`REGISTRY`."""

    settings: TrainOptimize

    @classmethod
    def from_config(cls, node: DictConfig | None) -> TrainingOptimizations:
        """From the ``optimize`` node, checked against its schema (None: the schema's defaults)."""
        values = OmegaConf.to_container(node, resolve=True) if node is not None else {}
        return cls(build_typed(TrainOptimize, values, "optimize"))  # type: ignore[arg-type]

    @classmethod
    def create(cls, **values: Any) -> TrainingOptimizations:
        """``create(compile=True, prune_amount=0.3)``: schema defaults for the rest (checked)."""
        prune = {
            key.removeprefix("prune_"): values.pop(key) for key in list(values) if key.startswith("prune_")
        }
        return cls.from_config(OmegaConf.create({**values, "prune": prune}))

    @property
    def compile(self) -> bool:
        return self.settings.compile

    @property
    def prunes(self) -> bool:
        return self.settings.prune.amount > 0

    def callbacks(self, model: nn.Module) -> list[L.Callback]:
        """The callbacks that apply these optimizations to ``model`` during training, in order."""
        return [callback for entry in REGISTRY for callback in entry.from_settings(self.settings, model)]

    def check_trainer(self, trainer: L.Trainer) -> None:
        for entry in REGISTRY:
            entry.check_trainer(self.settings, trainer)

    def summary(self, model: nn.Module, trainer: L.Trainer) -> dict[str, Any]:
        """What was applied, for metrics.json (after training: the model as it ended up)."""
        summary: dict[str, Any] = {}
        for entry in REGISTRY:
            summary.update(entry.describe(self.settings, model, trainer))
        return summary


def find(trainer: L.Trainer, kind: type[L.Callback]) -> Any:
    """The trainer's callback of class ``kind``, or None."""
    return next((c for c in trainer.callbacks if isinstance(c, kind)), None)  # type: ignore[attr-defined]

"""``optimize.compile``: torch.compile what the LightningModule's steps run, with an eager fallback."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn

from perfkit.distributed import received_from_workers, send_to_main_process
from perfkit.optim.compiling import EagerFallback
from perfkit.optim.training.base import TrainingOptimization, find, register
from perfkit.schemas import TrainOptimize


@register
class CompileForward(TrainingOptimization):
    """``torch.compile`` what the LightningModule's steps run, for fit/validate/test.

    That is ``forward`` when the module defines it and its ``training_step`` calls it (one graph for
    the whole network); otherwise (no ``forward``, or a ``training_step`` that calls ``self.model``
    directly, as many language models do) each child module holding parameters, found at the first
    training batch. The module's state dict and checkpoints stay those of the eager model. Under DDP
    each process compiles its own copy, inside the DDP wrapper, so compilation is not lost. A
    compiler failure falls back to eager with a warning (:class:`EagerFallback`).
    """

    name = "compile"
    order = 30
    fields = ("compile_mode",)

    @classmethod
    def from_settings(cls, settings: TrainOptimize, model: nn.Module) -> list[L.Callback]:
        return [cls(mode=settings.compile_mode)] if settings.compile else []

    @classmethod
    def describe(cls, settings: TrainOptimize, model: nn.Module, trainer: L.Trainer) -> dict[str, Any]:
        described: dict[str, Any] = {"compile": settings.compile}
        if settings.compile:
            described["compile_mode"] = settings.compile_mode
        compiler = find(trainer, cls)
        return {**described, **(compiler.summary() if compiler else {})}

    def __init__(self, mode: str = "default", **compile_options: Any) -> None:
        self.options = {"mode": mode, **compile_options}
        self.fallback: EagerFallback | None = None
        self.fallbacks: dict[str, EagerFallback] = {}
        self.compiled: list[str] = []  # "forward", or the names of the compiled children
        self.note: str | None = None
        self._forward_calls = 0
        self._active = False
        self._children_only = False  # training_step was seen not to call forward
        # graphs dynamo compiled in each rank during fit: proof that DDP did not lose compilation
        self.graphs_per_rank: list[int] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._active:
            return  # already compiled for an earlier stage
        self._active = True
        if is_overridden("forward", pl_module, parent=L.LightningModule) and not self._children_only:
            self._compile_forward(pl_module)
        else:
            self._compile_children(pl_module, f"{type(pl_module).__name__} has no forward")

    def _compile_forward(self, pl_module: L.LightningModule) -> None:
        eager = pl_module.forward
        self.fallback = EagerFallback(torch.compile(eager, **self.options), eager)
        compiled = self.fallback

        def forward(*args: Any, **kwargs: Any) -> Any:
            self._forward_calls += 1
            return compiled(*args, **kwargs)

        pl_module.forward = forward  # type: ignore[method-assign]
        self.compiled = ["forward"]

    def _compile_children(self, pl_module: L.LightningModule, why: str) -> None:
        children = [
            (name, child)
            for name, child in pl_module.named_children()
            if any(True for _ in child.parameters()) and "forward" not in vars(child)
        ]
        for name, child in children:
            eager = child.forward
            self.fallbacks[name] = EagerFallback(torch.compile(eager, **self.options), eager)
            child.forward = self.fallbacks[name]
        self.compiled = [name for name, _ in children]
        self.fallback = next(iter(self.fallbacks.values()), None)
        shown = ", ".join(self.compiled) or "nothing: it has no child module with parameters"
        note = f"{why}: compiled its submodules ({shown})"
        if note != self.note:  # once, not again for validate and test
            rank_zero_info(f"optimize.compile: {note}")
        self.note = note

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.compiled == ["forward"] and self._forward_calls == 0 and batch_idx == 0:
            vars(pl_module).pop("forward", None)
            self._children_only = True
            self._compile_children(pl_module, "training_step does not call forward")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from torch._dynamo.utils import counters

        graphs = torch.tensor(counters["stats"]["unique_graphs"], device=pl_module.device)
        gathered = trainer.strategy.all_gather(graphs)
        self.graphs_per_rank = [int(n) for n in gathered.reshape(-1).tolist()]
        send_to_main_process(trainer, "compiled_graphs_per_rank", [float(n) for n in self.graphs_per_rank])
        eager_ranks = [rank for rank, graphs in enumerate(self.graphs_per_rank) if graphs == 0]
        if eager_ranks and self.reason() is None:
            # no error, yet dynamo captured nothing (seen with torch 2.11 under Lightning): say so
            self.note = (
                f"torch.compile captured no graph on rank(s) {eager_ranks} (compiled: "
                f"{', '.join(self.compiled) or 'nothing'}): the model ran eager (torch {torch.__version__})"
            )
            rank_zero_warn(f"optimize.compile=true, but {self.note}")

    def reason(self) -> str | None:
        """Why some compiled code fell back to eager, or None."""
        reasons = [
            f.reason for f in ([self.fallback] if self.fallback else []) + list(self.fallbacks.values())
        ]
        return next((r for r in reasons if r), None)

    def collect(self, trainer: L.Trainer) -> None:
        """After fit: take the counts from the worker processes when ``ddp_spawn`` ran it."""
        if not self.graphs_per_rank:
            self.graphs_per_rank = [
                int(n) for n in received_from_workers(trainer, "compiled_graphs_per_rank") or []
            ]

    def summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "compiled": self.compiled,
            "compiled_graphs_per_rank": self.graphs_per_rank,
            "fell_back_to_eager": self.reason(),
        }
        if self.note:
            summary["compile_note"] = self.note
        return summary

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        vars(pl_module).pop("forward", None)
        for name in self.fallbacks:
            vars(getattr(pl_module, name)).pop("forward", None)
        self._active = False

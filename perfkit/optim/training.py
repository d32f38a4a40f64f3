"""Optimizations applied during Lightning training, driven by the ``optimize`` config node.

    python -m perfkit.train optimize.compile=true
    python -m perfkit.train optimize.prune.amount=0.5 optimize.prune.method=channels optimize.prune.at_epoch=1

Masks (``l1_unstructured``, ``random_unstructured``, ``global_l1``, ``ln_structured``) use Lightning's
``ModelPruning`` (masks kept while fine-tuning, checkpoints saved without them, made permanent at the
end). ``channels`` uses :func:`perfkit.prune`'s Torch-Pruning path on the LightningModule itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelPruning
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden
from omegaconf import DictConfig, OmegaConf
from torch import nn

from perfkit.distributed import received_from_workers, send_to_main_process
from perfkit.optim.compiling import EagerFallback
from perfkit.optim.pruning import output_layer, prune_channels_inplace
from perfkit.optim.report import PRUNABLE
from perfkit.schemas import TrainOptimize


@dataclass(frozen=True)
class TrainingOptimizations:
    """What the ``optimize`` node (:class:`perfkit.schemas.TrainOptimize`) asks of a training run."""

    compile: bool
    compile_mode: str
    prune_amount: float
    prune_method: str
    prune_at_epoch: int

    @property
    def prunes(self) -> bool:
        return self.prune_amount > 0

    @classmethod
    def from_config(cls, node: DictConfig | None) -> TrainingOptimizations:
        """From the ``optimize`` node, checked against its schema (None: the schema's defaults)."""
        from perfkit.config import build_typed

        values = OmegaConf.to_container(node, resolve=True) if node is not None else {}
        typed = build_typed(TrainOptimize, values, "optimize")  # type: ignore[arg-type]
        prune = typed.prune
        return cls(typed.compile, typed.compile_mode, prune.amount, prune.method, prune.at_epoch)

    @classmethod
    def create(cls, **values: Any) -> TrainingOptimizations:
        """``create(compile=True, prune_amount=0.3)``: schema defaults for the rest (checked)."""
        prune = {
            key.removeprefix("prune_"): values.pop(key) for key in list(values) if key.startswith("prune_")
        }
        return cls.from_config(OmegaConf.create({**values, "prune": prune}))

    def summary(self, model: nn.Module, applied: bool | None = True) -> dict[str, Any]:
        """What was applied, for metrics.json (after training: the model as it ended up)."""
        from perfkit.optim.report import weight_sparsity

        summary: dict[str, Any] = {"compile": self.compile}
        if self.compile:
            summary["compile_mode"] = self.compile_mode
        if self.prunes:
            summary["prune"] = {
                "amount": self.prune_amount,
                "method": self.prune_method,
                "at_epoch": self.prune_at_epoch,
                "applied": bool(applied),
                "weight_sparsity": round(weight_sparsity(model), 4),
            }
            if not applied:
                summary["prune"]["why_not"] = (
                    f"training ended before epoch {self.prune_at_epoch} started (trainer.max_steps, early "
                    "stopping or max_time): nothing was pruned"
                )
        return summary

    def check_trainer(self, trainer: L.Trainer) -> None:
        """Refuse settings this Trainer cannot carry out, before any process starts."""
        from perfkit.errors import ConfigError

        if not self.prunes:
            return
        max_epochs = trainer.max_epochs
        if max_epochs is not None and max_epochs >= 0 and self.prune_at_epoch >= max_epochs:
            raise ConfigError(
                f"optimize.prune.at_epoch={self.prune_at_epoch} is never reached: trainer.max_epochs={max_epochs} "
                f"runs epochs 0..{max_epochs - 1}"
            )
        if self.prune_method == "channels":
            check_world_size(self.prune_at_epoch, trainer.world_size)

    def callbacks(self, model: nn.Module) -> list[L.Callback]:
        """The callbacks that apply these optimizations to ``model`` during training."""
        callbacks: list[L.Callback] = []
        if self.prunes and self.prune_method == "channels":
            callbacks.append(PruneChannels(self.prune_amount, at_epoch=self.prune_at_epoch))
        elif self.prunes:
            callbacks.append(_mask_pruning(model, self.prune_amount, self.prune_method, self.prune_at_epoch))
        if self.compile:
            callbacks.append(CompileForward(mode=self.compile_mode))
        return callbacks


class CompileForward(L.Callback):
    """``torch.compile`` what the LightningModule's steps run, for fit/validate/test.

    That is ``forward`` when the module defines it and its ``training_step`` calls it (one graph for
    the whole network); otherwise (no ``forward``, or a ``training_step`` that calls ``self.model``
    directly, as many language models do) each child module holding parameters, found at the first
    training batch. The module's state dict and checkpoints stay those of the eager model. Under DDP
    each process compiles its own copy, inside the DDP wrapper, so compilation is not lost. A
    compiler failure falls back to eager with a warning (:class:`EagerFallback`).
    """

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


class PruneChannels(L.Callback):
    """Remove ``amount`` of the channels/neurons (Torch-Pruning) at the start of epoch ``at_epoch``.

    ``at_epoch=0`` prunes before training (the optimizer and DDP then see the small model). Later
    epochs rebuild the optimizer after pruning, which needs a single process: under DDP use 0.
    The model is traced through ``forward`` with ``pl_module.example_input_array`` or, when the
    module sets none, the input of the first training batch (the first element of a tuple batch).
    """

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
    from perfkit.errors import ConfigError

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
    from perfkit.errors import ConfigError

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

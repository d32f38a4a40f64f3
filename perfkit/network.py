"""Which part of a LightningModule is "the network" that post-training transforms change, and what
it is called with: for modules of any shape, not only perfkit's classifiers.

- a module with a ``net`` attribute (perfkit's classifiers, lightning-hydra-template modules): ``net``;
- else a module that defines ``forward``: the module itself;
- else (``training_step`` calls ``self.model(...)``): its largest child module.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn


def network_path(module: nn.Module) -> str:
    """The attribute holding the network ("" for the module itself)."""
    if isinstance(getattr(module, "net", None), nn.Module):
        return "net"
    if not isinstance(module, L.LightningModule) or is_overridden(
        "forward", module, parent=L.LightningModule
    ):
        return ""
    children = [(sum(p.numel() for p in child.parameters()), name) for name, child in module.named_children()]
    children = [entry for entry in children if entry[0] > 0]
    if not children:
        raise ValueError(f"{type(module).__name__} has no forward and no child module with parameters")
    return max(children)[1]


def get_network(module: nn.Module, path: str) -> nn.Module:
    return module if not path else getattr(module, path)


def with_network(module: nn.Module, path: str, network: nn.Module) -> nn.Module:
    """A copy of ``module`` whose network is ``network`` (``network`` itself when the path is "")."""
    if not path:
        return network
    # the memo hands deepcopy the new network in place of the old one (which is not copied)
    return copy.deepcopy(module, {id(get_network(module, path)): network})


@dataclass
class Call:
    """The positional and keyword arguments one call of the network received."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    @property
    def batch_size(self) -> int | None:
        first = next((a for a in (*self.args, *self.kwargs.values()) if isinstance(a, torch.Tensor)), None)
        return int(first.shape[0]) if first is not None and first.dim() > 0 else None

    def resized(self, size: int) -> Call:
        """The same call with every batched tensor cut or repeated to ``size`` rows."""
        batch = self.batch_size
        if batch is None or batch == size:
            return self

        def fit(value: Any) -> Any:
            if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != batch:
                return value
            repeats = -(-size // batch)
            return value.repeat(repeats, *([1] * (value.dim() - 1)))[:size]

        return Call(tuple(fit(a) for a in self.args), {k: fit(v) for k, v in self.kwargs.items()})

    def to(self, device: torch.device) -> Call:
        def move(value: Any) -> Any:
            return value.to(device) if isinstance(value, torch.Tensor) else value

        return Call(tuple(move(a) for a in self.args), {k: move(v) for k, v in self.kwargs.items()})

    def run(self, network: Callable[..., Any]) -> Any:
        return network(*self.args, **self.kwargs)


class CaptureFirstCall:
    """A forward pre-hook that keeps the first call's inputs (detached copies)."""

    def __init__(self, network: nn.Module) -> None:
        self.call: Call | None = None
        self._handle = network.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.call is None:
            detach = lambda v: v.detach().clone() if isinstance(v, torch.Tensor) else v  # noqa: E731
            self.call = Call(tuple(detach(a) for a in args), {k: detach(v) for k, v in kwargs.items()})

    def remove(self) -> None:
        self._handle.remove()


def call_from_batch(module: nn.Module, batch: Any) -> Call | None:
    """The network's inputs when nothing was captured: ``example_input_array``, or a tuple batch's
    first element, or a tensor batch."""
    example = getattr(module, "example_input_array", None)
    if isinstance(example, torch.Tensor):
        return Call((example,), {})
    if isinstance(example, tuple):
        return Call(example, {})
    if isinstance(batch, list | tuple) and batch and isinstance(batch[0], torch.Tensor):
        return Call((batch[0],), {})
    if isinstance(batch, torch.Tensor):
        return Call((batch,), {})
    return None

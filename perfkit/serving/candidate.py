"""A serving candidate: a name, the callable that serves, how it is loaded in a fresh process
(``kind``, ``path``), and what the caller measured of it (held-out accuracy)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from perfkit.errors import first_line
from perfkit.optim.compiling import CompiledModule

KINDS = ("torch", "torch_compile", "onnx", "aoti")


@dataclass
class Candidate:
    """One way to serve the model: ``module`` runs it in this process; ``kind`` and ``path`` say how a
    fresh serving process loads it (``path`` None: ``module`` is pickled for the cold start)."""

    name: str
    module: nn.Module | Callable[..., Any]
    kind: str = "torch"
    path: str | None = None
    accuracy: float | None = None
    notes: list[str] = field(default_factory=list)


def eager_of(module: Any) -> Any:
    """The module a compiled candidate wraps: what a fresh process loads before compiling."""

    return module.module if isinstance(module, CompiledModule) else module


def error_summary(error: BaseException) -> str:
    return first_line(error, limit=200, typed=True)

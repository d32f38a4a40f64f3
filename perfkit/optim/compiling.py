"""torch.compile with validated options and a fallback to eager that says why."""

from __future__ import annotations

import copy
import warnings
from collections import Counter
from typing import Any

import torch
from torch import nn

from perfkit.optim.report import attach, measure

MODES: tuple[str, ...] = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class CompiledModule(nn.Module):
    """A module run through ``torch.compile``, falling back to eager if compilation fails.

    Compilation happens at the first call, so that is where failure shows: the call is retried
    eagerly and, if eager works, the module stays eager from then on, with a warning carrying the
    compiler's reason (``fallback_reason``). An error eager raises too is the caller's, and is raised.
    ``module`` is the eager module; it owns the parameters (state-dict keys ``module.*``).
    """

    def __init__(self, module: nn.Module, **compile_options: Any) -> None:
        super().__init__()
        self.module = module
        self.compile_options = compile_options
        self.fallback_reason: str | None = None
        # kept out of the module tree: its parameters are `module`'s
        self._compiled: list[Any] = [torch.compile(module, **compile_options)]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.fallback_reason is not None:
            return self.module(*args, **kwargs)
        try:
            return self._compiled[0](*args, **kwargs)
        except Exception as compile_error:
            result = self.module(*args, **kwargs)  # raises if the input, not the compiler, is at fault
            self.fallback_reason = f"{type(compile_error).__name__}: {_first_line(compile_error)}"
            warnings.warn(
                f"torch.compile failed, running eager instead ({self.fallback_reason})", stacklevel=2
            )
            return result

    def __deepcopy__(self, memo: dict[int, Any]) -> CompiledModule:
        copied = CompiledModule(copy.deepcopy(self.module, memo), **self.compile_options)
        copied.fallback_reason = self.fallback_reason
        return copied


def compile(
    model: nn.Module,
    *,
    mode: str = "default",
    dynamic: bool | None = None,
    fullgraph: bool = False,
    backend: str = "inductor",
) -> CompiledModule:
    """A compiled copy of ``model`` (left untouched); the same numbers, computed faster where it helps.

    On this project's CPU, compiling helps inference of conv nets (~2x) and can slow down training
    steps: measure before shipping (``perfkit.benchmark``).
    """
    if mode not in MODES:
        raise ValueError(f"unknown compile mode {mode!r}; allowed: {', '.join(MODES)}")
    if dynamic not in (None, True, False):
        raise ValueError(f"dynamic must be true, false or null, got {dynamic!r}")
    backends = sorted({"inductor", *torch._dynamo.list_backends(exclude_tags=())})
    if backend not in backends:
        raise ValueError(f"unknown compile backend {backend!r}; allowed: {', '.join(backends)}")
    options: dict[str, Any] = {"dynamic": dynamic, "fullgraph": fullgraph, "backend": backend}
    if backend == "inductor":
        options["mode"] = mode
    compiled = CompiledModule(copy.deepcopy(model), **options)
    notes = [f"torch.compile(backend={backend}, mode={mode}): compiles at the first call; weights unchanged"]
    report = measure(f"compile(mode={mode}, backend={backend})", model, compiled, Counter(), notes)
    attach(compiled, model, report)
    return compiled


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no message"

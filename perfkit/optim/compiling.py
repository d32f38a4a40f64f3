"""torch.compile with validated options and a fallback to eager that says why."""

from __future__ import annotations

import copy
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from perfkit.errors import first_line
from perfkit.optim.report import attach, measure, require_module
from perfkit.schemas import CompileMode, choices

MODES = choices(CompileMode)


class EagerFallback:
    """Calls ``compiled``; if that raises, calls ``eager`` and, if eager works, stays eager from then on.

    Compilation happens at the first call made outside any ``TorchDispatchMode`` (calls under one,
    such as a FLOP count, run eager), so that is where a compiler failure shows. The warning
    carries the compiler's reason (also kept in ``reason``). An error that eager raises too is the
    caller's (a wrong input, say) and is raised as is.
    """

    def __init__(
        self,
        compiled: Callable[..., Any],
        eager: Callable[..., Any],
        on_fallback: Callable[[str], None] | None = None,
    ) -> None:
        self.compiled = compiled
        self.eager = eager
        self.on_fallback = on_fallback
        self.reason: str | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.reason is not None or _dispatch_mode_active():
            return self.eager(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except Exception as compile_error:
            result = self.eager(*args, **kwargs)
            self.reason = first_line(compile_error, typed=True)
            warnings.warn(f"torch.compile failed, running eager instead ({self.reason})", stacklevel=3)
            if self.on_fallback is not None:
                self.on_fallback(self.reason)
            return result


class CompiledModule(nn.Module):
    """``module`` run through ``torch.compile``, with :class:`EagerFallback`.

    ``module`` is the eager module and owns the parameters. The state dict has ``module``'s own
    keys (no ``_orig_mod.``/``module.`` prefix), so weights move freely between the compiled and
    the eager model.
    """

    def __init__(self, module: nn.Module, **compile_options: Any) -> None:
        super().__init__()
        self.module = module
        self.compile_options = compile_options
        # kept out of the module tree: its parameters are `module`'s
        self._run = EagerFallback(torch.compile(module, **compile_options), module, self._note_fallback)
        self.register_state_dict_post_hook(_drop_prefix)
        self.register_load_state_dict_pre_hook(_add_prefix)

    @property
    def fallback_reason(self) -> str | None:
        return self._run.reason

    def _note_fallback(self, reason: str) -> None:
        """The report said "compiles at the first call": say what happened instead."""
        for report in getattr(self, "perfkit_reports", [])[-1:]:
            report.notes[:] = [f"torch.compile failed at the first call; this model runs eager ({reason})"]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._run(*args, **kwargs)

    def __deepcopy__(self, memo: dict[int, Any]) -> CompiledModule:
        copied = CompiledModule(copy.deepcopy(self.module, memo), **self.compile_options)
        copied._run.reason = self._run.reason
        return copied

    def __reduce__(self) -> tuple[Any, ...]:
        return (CompiledModule, (self.module,), {"compile_options": self.compile_options})

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(self.module, **state["compile_options"])  # type: ignore[misc]


def _drop_prefix(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    inner = f"{prefix}module."
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner) :]] = state_dict.pop(key)


def _add_prefix(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(f"{prefix}module.")]:
        state_dict[f"{prefix}module.{key[len(prefix) :]}"] = state_dict.pop(key)


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
    require_module(model, "perfkit.compile")
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


def _dispatch_mode_active() -> bool:
    """Whether a ``TorchDispatchMode`` (a FLOP counter: Lightning's model summary runs the forward
    under one) is active. torch 2.11's dynamo skips a frame first called under one and then runs it
    eager for good, so the compiled call waits for a call outside any mode."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    return _get_current_dispatch_mode() is not None

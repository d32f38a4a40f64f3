"""The framework's own per-step costs, cut where they buy nothing.

On a small model a training step is a few hundred microseconds of kernels, and Lightning adds its
bookkeeping around each one: a profiler context per hook and callback, an attribute set through
``nn.Module.__setattr__`` per hook and (with a CUDA build of torch on a machine without a GPU) an
NVML library load inside every ``optimizer.step()``. Each is small; together with perfkit's own
per-step metrics they made the digits-MLP step 0.7-1.3 ms slower than a hand-written loop on
2 CPU cores (``benchmarks/results/train_parity-cpu.md`` has the figures after these cuts).

- :class:`QuietProfiler`: the Trainer's profiler when none is asked for.
- :class:`LeanHooks`: a LightningModule mixin (perfkit's ``ImageClassifier`` uses it; so can yours).
- :func:`skip_gpu_probe_without_gpus`: the per-step CUDA probe, when there is no GPU to probe.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import torch
from lightning.pytorch.profilers import PassThroughProfiler

log = logging.getLogger(__name__)

_NOTHING = contextlib.nullcontext()
# Lightning sets it on import so that torch.cuda.is_available() asks NVML and cannot poison a fork
_NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"


class QuietProfiler(PassThroughProfiler):
    """Lightning's no-op profiler without the cost of entering a new generator-based context for each
    hook of each callback (about 100 a step): ``profile`` returns one shared do-nothing context."""

    def profile(self, action_name: str) -> contextlib.AbstractContextManager[None]:  # type: ignore[override]
        return _NOTHING


class LeanHooks:
    """LightningModule mixin: Lightning records the running hook's name on the module before every
    hook call (about 25 a step), and ``nn.Module.__setattr__`` checks parameters, modules and buffers
    first. The name is none of these, so it is stored directly.

    Put it first among the bases: ``class MyModule(LeanHooks, L.LightningModule)``.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)


def skip_gpu_probe_without_gpus() -> bool:
    """On a machine with no visible CUDA device, let ``torch.cuda.is_available()`` ask the CUDA
    runtime (answer cached, about 4 us) instead of loading NVML each time (about 85 us, and torch's
    optimizers ask on every step). The NVML route exists to keep forks usable after the check; with
    no device there is nothing to protect. Returns whether it changed anything."""
    if os.environ.get(_NVML_CHECK) != "1" or not torch.backends.cuda.is_built():
        return False
    if torch.cuda.device_count() > 0:
        return False
    os.environ[_NVML_CHECK] = "0"
    log.debug("no CUDA device: %s=0 (torch's per-step CUDA check skips NVML)", _NVML_CHECK)
    return True


@contextlib.contextmanager
def without_lightning_gpu_probe() -> Iterator[None]:
    """The CUDA check as torch does it by default, for code that runs as if Lightning were never
    imported (a hand-written loop in the same process as a Lightning run)."""
    saved = os.environ.pop(_NVML_CHECK, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[_NVML_CHECK] = saved
